import { Context, type Effect } from "effect"
import type { CompressionType } from "./CompressionType.js"
import type { CompressionError, DecompressionError } from "./errors.js"

/** Options of one compression. */
export interface CompressOptions {
  /**
   * Codec level: deflate 0..9 (default 6, zlib's default, as QEMU), zstd
   * -131072..22 (default 3, zstd's default, as QEMU).
   */
  readonly level?: number
}

/**
 * Compression codecs of QCOW2 compressed clusters (qcow2.txt "Compressed
 * Clusters Descriptor", header field compression_type).
 *
 * - `decompress` fills exactly one cluster, `out` (its length is the cluster
 *   size, a power of two in 512 B..2 MiB), from `input`, which may carry
 *   trailing bytes: the stored size is rounded up to 512-byte sectors and may
 *   include the start of the next compressed cluster. Output shorter than the
 *   cluster or invalid data fail with a DecompressionError; output never
 *   exceeds `out`.
 * - `compress` compresses one whole cluster (`input.length` is the cluster
 *   size) and returns the compressed bytes when QEMU would store them
 *   (qcow2_co_pwritev_compressed_task: the codec must succeed within a
 *   buffer of cluster_size - 1 bytes, which means at most cluster_size - 2
 *   bytes for deflate, as zlib needs a spare byte to report the end, and at
 *   most cluster_size - 1 bytes for zstd), `undefined` otherwise (store the
 *   cluster uncompressed).
 *
 * Instances are not reentrant across threads but are safe to share within
 * one JavaScript realm (every call runs to completion synchronously).
 */
export interface ClusterCodecShape {
  /** Fills `out` (exactly one cluster) from the stored bytes `input`, which may run past the compressed data. */
  readonly decompress: (type: CompressionType, input: Uint8Array, out: Uint8Array) => Effect.Effect<void, DecompressionError>
  /** The bytes QEMU would store for the whole cluster `input`, or `undefined` when QEMU would write it uncompressed. */
  readonly compress: (
    type: CompressionType,
    input: Uint8Array,
    options?: CompressOptions
  ) => Effect.Effect<Uint8Array | undefined, CompressionError>
}

/** The cluster compression service. Provided by `NodeClusterCodec.layer` (node:zlib) or `PortableClusterCodec.layer` (pako). */
export class ClusterCodec extends Context.Service<ClusterCodec, ClusterCodecShape>()("@qcow2/compress/ClusterCodec") {}
