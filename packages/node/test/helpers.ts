import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"

export const tempDir = (): { dir: string; path: (name: string) => string; cleanup: () => void } => {
  const dir = mkdtempSync(join(tmpdir(), "qcow2-node-"))
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** qemu-img, with QEMU's failure to time PBKDF2 retried (see @qcow2/qemu-oracle). */
export const qemuImg = (...args: string[]): string => runQemu("qemu-img", args)

export const qemuIo = (...args: string[]): string => execFileSync("qemu-io", args, { encoding: "utf8" })

/** `qemu-img check --output=json`, whatever the exit code. */
export const qemuCheck = (...args: string[]): Record<string, unknown> & { exitCode: number } => {
  try {
    return { ...JSON.parse(execFileSync("qemu-img", ["check", "--output=json", ...args], { encoding: "utf8" })), exitCode: 0 }
  } catch (e) {
    const err = e as { status: number; stdout: string }
    return { ...JSON.parse(err.stdout || "{}"), exitCode: err.status }
  }
}

/** `qemu-img compare` exit code (0 identical). */
export const qemuCompare = (...args: string[]): number => {
  try {
    execFileSync("qemu-img", ["compare", ...args], { encoding: "utf8" })
    return 0
  } catch (e) {
    return (e as { status: number }).status
  }
}

/** The guest bytes of an image as `qemu-img convert -O raw` writes them. */
export const qemuRaw = (image: string, scratch: string, ...flags: string[]): Uint8Array => {
  execFileSync("qemu-img", ["convert", ...flags, "-O", "raw", image, scratch])
  return new Uint8Array(readFileSync(scratch))
}

export const pattern = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  let x = seed >>> 0 || 1
  for (let i = 0; i < length; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    out[i] = x & 0xff
  }
  return out
}

/** Open file descriptors of this process (to prove nothing is left open). */
export const openFds = (): number => readdirSync("/proc/self/fd").length

/** `--object secret` arguments of qemu-img/qemu-io for a passphrase. */
export const secretArgs = (passphrase: string): string[] => ["--object", `secret,id=sec0,data=${passphrase}`]

/** Byte equality without vitest's element-wise diff (slow on megabytes). */
export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))
