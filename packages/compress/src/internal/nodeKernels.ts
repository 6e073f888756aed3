import * as zlib from "node:zlib"
import { CompressionType } from "../CompressionType.js"
import { DecompressionError } from "../errors.js"
import type { DeflateKernels } from "./codec.js"
import { nodeDeflateCluster } from "./deflateNode.js"
import { DEFLATE_READ_WINDOW_BITS, makePortableInflate } from "./deflatePortable.js"

/**
 * The native handle behind a node:zlib stream, as node:zlib's own
 * synchronous path drives it (lib/zlib.js, processChunkSync): `writeSync`
 * runs inflate over the input into the caller's buffer and leaves
 * [avail_out, avail_in] in the stream's `_writeState`; a zlib error calls
 * `onerror` before `writeSync` returns. Not public API, so every member is
 * checked before use and the public one-shot API is used without it.
 */
interface ZlibHandle {
  writeSync(flush: number, input: Uint8Array, inOffset: number, inLength: number, out: Uint8Array, outOffset: number, outLength: number): void
  reset(): void
  onerror: (message: string, errno: number) => void
}

/**
 * One raw-inflate stream kept for every cluster, writing straight into the
 * cluster's buffer: reset (inflateReset) and one call per cluster, as
 * QEMU's qcow2_decompress makes one inflate call. node:zlib's one-shot
 * API builds a stream per call and allocates the output and copies it:
 * converting a 1 GiB zlib image, ~45 ms of the event loop's time plus the
 * collections of ~9000 cluster-sized buffers.
 * Answers the bytes written into `out` (all of it is QEMU's success,
 * whatever follows in the stream), or -1 when zlib refused the data before
 * `out` was full; undefined when this Node has no such handle.
 */
const reusableInflate = (): ((input: Uint8Array, out: Uint8Array) => number) | undefined => {
  const stream = zlib.createInflateRaw({ windowBits: DEFLATE_READ_WINDOW_BITS }) as zlib.InflateRaw & { _handle?: Partial<ZlibHandle>; _writeState?: Uint32Array }
  const handle = stream._handle
  const state = stream._writeState
  if (
    handle === undefined ||
    typeof handle.writeSync !== "function" ||
    typeof handle.reset !== "function" ||
    typeof handle.onerror !== "function" ||
    !(state instanceof Uint32Array) ||
    state.length < 2
  ) {
    stream.destroy()
    return undefined
  }
  const native = handle as ZlibHandle
  let failed = false
  native.onerror = () => {
    failed = true
  }
  return (input, out) => {
    failed = false
    native.reset()
    native.writeSync(zlib.constants.Z_SYNC_FLUSH, input, 0, input.length, out, 0, out.length)
    return failed ? -1 : out.length - state[0]
  }
}

/**
 * Inflate with node:zlib into one cluster (QEMU's verdict: the cluster
 * must be filled; what the stream holds past it is never looked at). A zlib
 * error sends the input to the bounded pako path, whose result is final:
 * QEMU stops once the cluster is full, and node:zlib may report an error a
 * little past that point, where QEMU never looks.
 */
const makeNodeInflate = (reused: ((input: Uint8Array, out: Uint8Array) => number) | undefined): ((input: Uint8Array, out: Uint8Array) => void) => {
  const exact = makePortableInflate()
  const shortOutput = (produced: number, wanted: number) =>
    new DecompressionError({
      compressionType: CompressionType.Deflate,
      reason: "ShortOutput",
      message: `deflate data yields ${produced} of ${wanted} bytes`
    })
  if (reused !== undefined) {
    return (input, out) => {
      const produced = reused(input, out)
      if (produced < 0) return exact(input, out)
      if (produced < out.length) throw shortOutput(produced, out.length)
    }
  }
  return (input, out) => {
    let result: Buffer
    try {
      result = zlib.inflateRawSync(input, {
        windowBits: DEFLATE_READ_WINDOW_BITS,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
        // One byte more than a cluster: a chunk that a whole cluster fills
        // exactly makes Node allocate a second chunk and call zlib again.
        chunkSize: out.length + 1,
        maxOutputLength: out.length
      })
    } catch {
      // ERR_BUFFER_TOO_LARGE (the stream holds more than a cluster) or a zlib error.
      return exact(input, out)
    }
    if (result.length < out.length) throw shortOutput(result.length, out.length)
    out.set(result)
  }
}

/** Whole-buffer raw inflate with native zlib (decodes the embedded zstd wasm). */
export const nodeInflateRaw = (data: Uint8Array): Uint8Array => zlib.inflateRawSync(data)

/**
 * Deflate kernels of NodeClusterCodec: node:zlib (inflate falls back to
 * pako, see above). `keptStream: false` inflates with node:zlib's public
 * one-shot API, as where the native handle is missing (tests run both).
 */
export const nodeDeflateKernels = (options: { readonly keptStream?: boolean } = {}): DeflateKernels => ({
  inflate: makeNodeInflate(options.keptStream === false ? undefined : reusableInflate()),
  deflate: (input, level) => nodeDeflateCluster(zlib, input, level)
})
