import * as zlib from "node:zlib"
import { CompressionType } from "../CompressionType.js"
import { DecompressionError } from "../errors.js"
import type { DeflateKernels } from "./codec.js"
import { nodeDeflateCluster } from "./deflateNode.js"
import { DEFLATE_READ_WINDOW_BITS, makePortableInflate } from "./deflatePortable.js"

/**
 * Inflate with node:zlib into at most one cluster. Node's one-shot API
 * cannot write into the caller's buffer, so the result (one chunk of
 * cluster size) is copied; `maxOutputLength` bounds the allocation. Its
 * synchronous path closes the zlib stream after every call, so a stream
 * cannot be kept from one cluster to the next. A
 * stream that holds more than a cluster makes Node throw
 * ERR_BUFFER_TOO_LARGE, and Node also reports errors in data past the end
 * of the cluster; QEMU accepts both (it stops once the cluster is full), so
 * on any Node error the input is decoded again by the bounded pako path,
 * whose result is final.
 */
const makeNodeInflate = (): ((input: Uint8Array, out: Uint8Array) => void) => {
  const exact = makePortableInflate()
  return (input, out) => {
    let result: Buffer
    try {
      result = zlib.inflateRawSync(input, {
        windowBits: DEFLATE_READ_WINDOW_BITS,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
        // One byte more than a cluster: a chunk that a whole cluster fills
        // exactly makes Node allocate a second chunk and call zlib again to
        // find nothing more (two cluster-sized allocations and two calls per
        // cluster; ~10-25% of the inflate of a text cluster, --no-opt).
        chunkSize: out.length + 1,
        maxOutputLength: out.length
      })
    } catch {
      // ERR_BUFFER_TOO_LARGE (the stream holds more than a cluster) or a zlib
      // error, possibly past the end of the cluster, where QEMU never looks:
      // the exact path gives QEMU's verdict.
      return exact(input, out)
    }
    if (result.length < out.length) {
      throw new DecompressionError({
        compressionType: CompressionType.Deflate,
        reason: "ShortOutput",
        message: `deflate data yields ${result.length} of ${out.length} bytes`
      })
    }
    out.set(result)
  }
}

/** Whole-buffer raw inflate with native zlib (decodes the embedded zstd wasm). */
export const nodeInflateRaw = (data: Uint8Array): Uint8Array => zlib.inflateRawSync(data)

/** Deflate kernels of NodeClusterCodec: node:zlib (inflate falls back to pako, see above). */
export const nodeDeflateKernels = (): DeflateKernels => ({
  inflate: makeNodeInflate(),
  deflate: (input, level) => nodeDeflateCluster(zlib, input, level)
})
