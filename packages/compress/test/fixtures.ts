import { type ClusterKernels, makeClusterKernels } from "../src/internal/codec.js"
import { portableDeflateKernels } from "../src/internal/deflatePortable.js"
import { nodeDeflateKernels } from "../src/internal/nodeKernels.js"
import type { ZstdKernel } from "../src/internal/zstdKernel.js"
import { zstdKernel } from "../src/internal/zstdModule.js"
import { nativeZstdKernel } from "../src/internal/zstdNative.js"

/** Every cluster size QEMU accepts: 512 B .. 2 MiB. */
export const CLUSTER_SIZES = Array.from({ length: 13 }, (_, i) => 512 << i)

/** Deterministic pseudo-random bytes (xorshift32). */
export const randomBytes = (length: number, seed = 1): Uint8Array => {
  const out = new Uint8Array(length)
  let x = seed >>> 0 || 1
  for (let i = 0; i < length; i++) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    out[i] = x & 0xff
  }
  return out
}

const WORDS =
  "qcow2 cluster refcount table header snapshot backing file compressed zstd deflate sector offset guest host L1 L2 entry bitmap extension"
    .split(" ")

/** Text-like data: compresses to roughly a third with deflate. */
export const textBytes = (length: number, seed = 7): Uint8Array => {
  const rnd = randomBytes(length, seed)
  const out = new Uint8Array(length)
  let i = 0
  let r = 0
  while (i < length) {
    const word = WORDS[rnd[r++ % length] % WORDS.length]
    for (let k = 0; k < word.length && i < length; k++) out[i++] = word.charCodeAt(k)
    if (i < length) out[i++] = rnd[r++ % length] % 11 === 0 ? 10 : 32
  }
  return out
}

/** A random block of `period` bytes repeated: back-references at distance `period`. */
export const periodicBytes = (length: number, period: number, seed = 3): Uint8Array => {
  const block = randomBytes(period, seed)
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i += period) out.set(block.subarray(0, Math.min(period, length - i)), i)
  return out
}

export const concat = (...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** Rounds `data` up to whole 512-byte sectors with `fill` (what a qcow2 reader reads for a compressed cluster). */
export const padToSector = (data: Uint8Array, fill: Uint8Array = new Uint8Array(512)): Uint8Array => {
  const padded = Math.ceil(data.length / 512) * 512
  return concat(data, fill.subarray(0, padded - data.length))
}

/** The system's libzstd through koffi; the tests need it (CI installs libzstd1 with qemu-utils). */
export const loadNativeZstd = async (): Promise<ZstdKernel> => {
  const kernel = await nativeZstdKernel()
  if (kernel === undefined) throw new Error("libzstd.so.1 could not be loaded through koffi")
  return kernel
}

/**
 * The synchronous kernels of NodeClusterCodec (first: as it runs here,
 * with native zstd; then with the wasm zstd, and without node:zlib's native
 * handle) and PortableClusterCodec (what their Effects run per cluster).
 */
export const makeCodecs = async (): Promise<ReadonlyArray<readonly [string, ClusterKernels]>> => {
  const native = await loadNativeZstd()
  const wasm = await zstdKernel()
  return [
    ["node", makeClusterKernels(nodeDeflateKernels(), () => native)],
    ["node, wasm zstd", makeClusterKernels(nodeDeflateKernels(), () => wasm)],
    ["node one-shot inflate", makeClusterKernels(nodeDeflateKernels({ keptStream: false }), () => wasm)],
    ["portable", makeClusterKernels(portableDeflateKernels(), () => wasm)]
  ]
}

/** Calls `f`, returns the thrown value (fails the test if nothing is thrown). */
export const thrown = (f: () => unknown): unknown => {
  try {
    f()
  } catch (error) {
    return error
  }
  throw new Error("expected an exception")
}

/** Fast byte equality for large buffers (vitest's deep equality is slow on MiB-sized arrays). */
export const expectSameBytes = (actual: Uint8Array | undefined, expected: Uint8Array, label = ""): void => {
  if (actual === undefined) throw new Error(`${label}: got undefined, expected ${expected.length} bytes`)
  if (actual.length !== expected.length) {
    throw new Error(`${label}: got ${actual.length} bytes, expected ${expected.length}`)
  }
  if (Buffer.compare(actual, expected) !== 0) {
    let i = 0
    while (actual[i] === expected[i]) i++
    throw new Error(`${label}: first difference at byte ${i}: ${actual[i]} != ${expected[i]}`)
  }
}
