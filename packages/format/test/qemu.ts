import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"

/** A scratch directory for qemu-img runs; call `cleanup` in afterAll. */
export function scratch(): { dir: string; path: (name: string) => string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "qcow2-format-"))
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

export function qemuImg(cwd: string, ...args: string[]): string {
  return runQemu("qemu-img", args, { cwd })
}

export function qemuIo(cwd: string, file: string, ...commands: string[]): string {
  return execFileSync("qemu-io", ["-f", "qcow2", ...commands.flatMap((c) => ["-c", c]), file], { cwd, encoding: "utf8" })
}

/** `qemu-img info --output=json`. */
export function qemuInfo(cwd: string, file: string): any {
  return JSON.parse(qemuImg(cwd, "info", "--output=json", file))
}

export function readBytes(file: string, offset = 0, length?: number): Uint8Array {
  const all = new Uint8Array(readFileSync(file))
  return all.subarray(offset, length === undefined ? undefined : offset + length)
}
