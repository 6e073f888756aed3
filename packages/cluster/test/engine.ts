import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import { Effect } from "effect"
import { decodeImageHeader, decodeSnapshotTable } from "@qcow2/format"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { makeMemoryStorage } from "@qcow2/storage"
import type { BlockStorageShape } from "@qcow2/storage"
import { ImageError, Qcow2Engine } from "../src/index.js"
import type { BackingLayer } from "../src/index.js"

/** Shared set-up of the engine tests: images made by qemu-img, held in memory, checked by qemu-img again. */

export const run = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(effect as Effect.Effect<A, never>)
export const fail = <A, E>(effect: Effect.Effect<A, E>): Promise<E> => Effect.runPromise(Effect.flip(effect) as Effect.Effect<E, never>)

export const scratch = () => {
  const dir = mkdtempSync(join(tmpdir(), "qcow2-engine-"))
  return { path: (name: string) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** qemu-img, with QEMU's failure to time PBKDF2 retried (see @qcow2/qemu-oracle). */
export const qemuImg = (...args: string[]): string => runQemu("qemu-img", args)
export const qemuIo = (...args: string[]): string => execFileSync("qemu-io", args, { encoding: "utf8" })

/** `qemu-img check --output=json` of a file, whatever its exit code. */
export const qemuCheck = (file: string): { corruptions?: number; leaks?: number; exitCode: number } => {
  try {
    return { ...JSON.parse(execFileSync("qemu-img", ["check", "--output=json", file], { encoding: "utf8" })), exitCode: 0 }
  } catch (e) {
    const err = e as { status: number; stdout: string }
    return { ...JSON.parse(err.stdout || "{}"), exitCode: err.status }
  }
}

/** Bytes that differ from position to position (xorshift). */
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

/** A backing layer over bytes in memory. */
export const memoryBacking = (bytes: Uint8Array): BackingLayer => ({
  size: bytes.length,
  read: (offset, into) =>
    Effect.sync(() => {
      into.fill(0)
      into.set(bytes.subarray(offset, Math.min(bytes.length, offset + into.length)))
    }),
  blockStatus: (offset, length) =>
    Effect.succeed({ offset, length: Math.min(length, bytes.length - offset), depth: 0, present: true, zero: false, data: true, compressed: false })
})

export interface OpenedEngine {
  readonly engine: Qcow2Engine
  readonly storage: BlockStorageShape
  /** The image bytes now (what a crash right now would leave, flushed or not). */
  readonly bytes: () => Promise<Uint8Array>
  /** Writes the image to `path` for qemu-img. */
  readonly save: (path: string) => Promise<void>
}

/** Opens the qcow2 file at `path` (made by qemu-img) as an engine over a memory copy. */
export async function openEngine(path: string, options: { readOnly?: boolean; backing?: BackingLayer; wrap?: (s: BlockStorageShape) => BlockStorageShape } = {}): Promise<OpenedEngine> {
  const file = readFileSync(path)
  const memory = makeMemoryStorage({ name: path, initial: new Uint8Array(file) })
  const storage = options.wrap ? options.wrap(memory) : memory
  const image = decodeImageHeader(new Uint8Array(file.subarray(0, 2 ** new DataView(file.buffer, file.byteOffset).getUint32(20))))
  const h = image.header
  const cs = 2 ** h.clusterBits
  const l1Table = new Uint8Array(Math.max(8, h.l1Size * 8))
  l1Table.set(file.subarray(h.l1TableOffset, h.l1TableOffset + h.l1Size * 8))
  const refcountTable = new Uint8Array(file.subarray(h.refcountTableOffset, h.refcountTableOffset + h.refcountTableClusters * cs))
  const codec = await run(NodeClusterCodec.make)
  const type = h.compressionType === 1 ? 1 : 0
  const engine = new Qcow2Engine({
    storage,
    dataFile: undefined,
    header: image,
    readOnly: options.readOnly ?? false,
    l1Table,
    refcountTable,
    fileSize: file.length,
    snapshots: h.nbSnapshots > 0 ? decodeSnapshotTable(new Uint8Array(file.subarray(h.snapshotsOffset)), h.nbSnapshots).snapshots : [],
    backing: options.backing,
    compression: { decompress: (input, out) => codec.decompress(type, input, out), compress: (input) => codec.compress(type, input) },
    crypto: undefined,
    l2CacheBytes: 1 << 20,
    refcountCacheBytes: 1 << 20
  })
  const bytes = () =>
    run(
      Effect.gen(function* () {
        const out = new Uint8Array(yield* memory.size())
        yield* memory.read(0, out)
        return out
      })
    )
  return { engine, storage: memory, bytes, save: async (to) => writeFileSync(to, await bytes()) }
}

export { ImageError }
