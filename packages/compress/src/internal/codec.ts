import { Effect } from "effect"
import type { ClusterCodecShape, CompressOptions } from "../ClusterCodec.js"
import { CompressionType, DEFAULT_DEFLATE_LEVEL, DEFAULT_ZSTD_LEVEL, isClusterSize } from "../CompressionType.js"
import { CompressionError, DecompressionError } from "../errors.js"
import { decompressZstdCluster } from "./zstdCluster.js"
import type { ZstdKernel } from "./zstdKernel.js"

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
