import { Context, Effect } from "effect"
import { CompressionType, DEFAULT_DEFLATE_LEVEL, DEFAULT_ZSTD_LEVEL, isClusterSize } from "./CompressionType.js"
import { CompressionError, DecompressionError } from "./errors.js"
import { decompressZstdCluster } from "./internal/zstdCluster.js"
import type { ZstdKernel } from "./internal/zstdKernel.js"

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
 * - The `*Sync` variants do the same without an Effect per call, for loops
 *   over many clusters; they throw DecompressionError / CompressionError.
 *
 * Instances are not reentrant across threads but are safe to share within
 * one JavaScript realm (every call runs to completion synchronously).
 */
export interface ClusterCodecShape {
  readonly decompress: (type: CompressionType, input: Uint8Array, out: Uint8Array) => Effect.Effect<void, DecompressionError>
  readonly compress: (
    type: CompressionType,
    input: Uint8Array,
    options?: CompressOptions
  ) => Effect.Effect<Uint8Array | undefined, CompressionError>
  /** Like `decompress`; throws DecompressionError. */
  readonly decompressSync: (type: CompressionType, input: Uint8Array, out: Uint8Array) => void
  /** Like `compress`; throws CompressionError. */
  readonly compressSync: (type: CompressionType, input: Uint8Array, options?: CompressOptions) => Uint8Array | undefined
}

/** The cluster compression service. Provided by `NodeClusterCodec.layer` (node:zlib) or `PortableClusterCodec.layer` (pako). */
export class ClusterCodec extends Context.Service<ClusterCodec, ClusterCodecShape>()("@qcow2/compress/ClusterCodec") {}

/** The primitives a layer supplies; argument checks and zstd framing are shared. */
export interface CodecBackend {
  /** Fills `out` from raw deflate data (throws DecompressionError). */
  readonly inflate: (input: Uint8Array, out: Uint8Array) => void
  /** Raw deflate of one cluster, `undefined` when it does not fit in `input.length - 1` bytes. */
  readonly deflate: (input: Uint8Array, level: number) => Uint8Array | undefined
  readonly zstd: ZstdKernel
}

const ZSTD_MIN_LEVEL = -131072
const ZSTD_MAX_LEVEL = 22

/**
 * Checks and defaults a level. Returns the level or throws CompressionError
 * (reason Unsupported).
 */
export const resolveLevel = (type: CompressionType, level: number | undefined): number => {
  if (type === CompressionType.Deflate) {
    if (level === undefined) return DEFAULT_DEFLATE_LEVEL
    if (Number.isInteger(level) && level >= 0 && level <= 9) return level
  } else if (type === CompressionType.Zstd) {
    if (level === undefined) return DEFAULT_ZSTD_LEVEL
    if (Number.isInteger(level) && level >= ZSTD_MIN_LEVEL && level <= ZSTD_MAX_LEVEL) return level
  } else {
    throw unknownCompressionType(type)
  }
  throw new CompressionError({
    compressionType: type,
    reason: "Unsupported",
    message: `invalid ${type === CompressionType.Deflate ? "deflate" : "zstd"} level ${level}`
  })
}

const unknownCompressionType = (type: number) =>
  new CompressionError({
    compressionType: type as CompressionType,
    reason: "Unsupported",
    message: `unknown compression type ${type}`
  })

/** Throws CompressionError unless `type` and the input (a whole cluster) are valid. */
export const checkCompressInput = (type: CompressionType, input: Uint8Array): void => {
  if (type !== CompressionType.Deflate && type !== CompressionType.Zstd) throw unknownCompressionType(type)
  if (!isClusterSize(input.length)) {
    throw new CompressionError({
      compressionType: type,
      reason: "Unsupported",
      message: `input of ${input.length} bytes is not a cluster (a power of two from 512 B to 2 MiB)`
    })
  }
}

/** Builds the service from a backend. */
export const makeClusterCodec = (backend: CodecBackend): ClusterCodecShape => {
  const { deflate, inflate, zstd } = backend

  const decompressSync = (type: CompressionType, input: Uint8Array, out: Uint8Array): void => {
    if (type !== CompressionType.Deflate && type !== CompressionType.Zstd) {
      throw new DecompressionError({
        compressionType: type,
        reason: "Unsupported",
        message: `unknown compression type ${type}`
      })
    }
    if (!isClusterSize(out.length)) {
      throw new DecompressionError({
        compressionType: type,
        reason: "Unsupported",
        message: `output of ${out.length} bytes is not a cluster (a power of two from 512 B to 2 MiB)`
      })
    }
    if (type === CompressionType.Deflate) inflate(input, out)
    else decompressZstdCluster(zstd, input, out)
  }

  const compressSync = (type: CompressionType, input: Uint8Array, options?: CompressOptions): Uint8Array | undefined => {
    checkCompressInput(type, input)
    const level = resolveLevel(type, options?.level)
    if (type === CompressionType.Deflate) return deflate(input, level)
    try {
      return zstd.compress(input, input.length - 1, level)
    } catch (cause) {
      throw new CompressionError({
        compressionType: type,
        reason: "Failed",
        message: cause instanceof Error ? cause.message : String(cause),
        cause
      })
    }
  }

  const decompress = (type: CompressionType, input: Uint8Array, out: Uint8Array): Effect.Effect<void, DecompressionError> =>
    Effect.suspend(() => {
      try {
        decompressSync(type, input, out)
        return Effect.void
      } catch (error) {
        return error instanceof DecompressionError ? Effect.fail(error) : Effect.die(error)
      }
    })

  const compress = (
    type: CompressionType,
    input: Uint8Array,
    options?: CompressOptions
  ): Effect.Effect<Uint8Array | undefined, CompressionError> =>
    Effect.suspend(() => {
      try {
        return Effect.succeed(compressSync(type, input, options))
      } catch (error) {
        return error instanceof CompressionError ? Effect.fail(error) : Effect.die(error)
      }
    })

  return { decompress, compress, decompressSync, compressSync }
}
