import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { NodeStorageOpener } from "@qcow2/storage-node"
import type { ClusterCodec } from "@qcow2/compress"
import type { StorageOpener } from "@qcow2/storage"

export const nodeLayer = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer)

/** Runs an image program against real files. */
export const runNode = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | StorageOpener | ClusterCodec>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect).pipe(Effect.provide(nodeLayer)) as Effect.Effect<A, E>)

export const tempDir = (): { dir: string; path: (name: string) => string; cleanup: () => void } => {
  const dir = mkdtempSync(join(tmpdir(), "qcow2-image-"))
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** qemu-img, with QEMU's failure to time PBKDF2 retried (see @qcow2/qemu-oracle). */
export const qemuImg = (...args: string[]): string => runQemu("qemu-img", args)
export const qemuIo = (...args: string[]): string => execFileSync("qemu-io", args, { encoding: "utf8" })

/** `qemu-img check --output=json`, whatever the exit code. */
export const qemuCheck = (file: string): { corruptions?: number; leaks?: number; "check-errors"?: number; exitCode: number } => {
  try {
    const out = execFileSync("qemu-img", ["check", "--output=json", file], { encoding: "utf8" })
    return { ...JSON.parse(out), exitCode: 0 }
  } catch (e) {
    const err = e as { status: number; stdout: string }
    return { ...JSON.parse(err.stdout || "{}"), exitCode: err.status }
  }
}

/** `qemu-img compare` exit code (0 identical). */
export const qemuCompare = (a: string, b: string, ...flags: string[]): number => {
  try {
    execFileSync("qemu-img", ["compare", ...flags, a, b], { encoding: "utf8" })
    return 0
  } catch (e) {
    return (e as { status: number }).status
  }
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
