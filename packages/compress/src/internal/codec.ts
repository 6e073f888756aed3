import { Effect } from "effect"
import type { ClusterCodecShape, CompressOptions } from "../ClusterCodec.js"
import { CompressionType, DEFAULT_DEFLATE_LEVEL, DEFAULT_ZSTD_LEVEL, isClusterSize } from "../CompressionType.js"
import { CompressionError, DecompressionError } from "../errors.js"
import { decompressZstdCluster } from "./zstdCluster.js"
import type { ZstdKernel } from "./zstdKernel.js"

/** The deflate primitives a layer supplies (node:zlib or pako). */
export interface DeflateKernels {
  /** Fills `out` from raw deflate data (throws DecompressionError). */
  readonly inflate: (input: Uint8Array, out: Uint8Array) => void
  /** Raw deflate of one cluster, `undefined` when it does not fit in `input.length - 1` bytes. */
  readonly deflate: (input: Uint8Array, level: number) => Uint8Array | undefined
}

/**
 * One cluster at a time, synchronously, on loaded kernels: argument checks,
 * levels and zstd framing shared by every layer. Throws DecompressionError /
 * CompressionError. The service wraps these in Effects; tests and benchmarks
 * call them directly.
 */
export interface ClusterKernels {
  readonly decompress: (type: CompressionType, input: Uint8Array, out: Uint8Array) => void
  readonly compress: (type: CompressionType, input: Uint8Array, options?: CompressOptions) => Uint8Array | undefined
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

/** The synchronous codec on `kernels` and a zstd kernel (`zstd` is only called for zstd clusters). */
export const makeClusterKernels = (kernels: DeflateKernels, zstd: () => ZstdKernel): ClusterKernels => {
  const { deflate, inflate } = kernels

  const decompress = (type: CompressionType, input: Uint8Array, out: Uint8Array): void => {
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
    else decompressZstdCluster(zstd(), input, out)
  }

  const compress = (type: CompressionType, input: Uint8Array, options?: CompressOptions): Uint8Array | undefined => {
    checkCompressInput(type, input)
    const level = resolveLevel(type, options?.level)
    if (type === CompressionType.Deflate) return deflate(input, level)
    try {
      return zstd().compress(input, input.length - 1, level)
    } catch (cause) {
      throw new CompressionError({
        compressionType: type,
        reason: "Failed",
        message: cause instanceof Error ? cause.message : String(cause),
        cause
      })
    }
  }

  return { decompress, compress }
}

const causeMessage = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/**
 * Builds the service from a layer's deflate kernels and a zstd loader.
 *
 * The zstd wasm instance is created by the first zstd cluster, not before:
 * instantiating it reserves a wasm linear memory, and V8 on 64-bit hosts
 * reserves ~10 GiB of address space for every 32-bit wasm memory (8 GiB plus
 * guard regions, so that bounds checks can be left to the MMU), whatever the
 * memory's declared maximum. Under an address-space limit (`ulimit -v`, some
 * containers) that reservation fails; deflate images must not depend on it.
 * The layers' loader (zstdKernel) then decodes with a TypeScript decoder and
 * fails to compress. A loader that fails makes zstd clusters fail with reason
 * `Unsupported` (decompression) or `Failed` (compression), and the next zstd
 * cluster tries again.
 */
export const makeClusterCodec = (kernels: DeflateKernels, loadZstd: () => Promise<ZstdKernel>): ClusterCodecShape => {
  let zstd: ZstdKernel | undefined
  const sync = makeClusterKernels(kernels, () => zstd!)

  const withZstd = <E>(onError: (cause: unknown) => E): Effect.Effect<void, E> =>
    Effect.tryPromise({ try: loadZstd, catch: onError }).pipe(
      Effect.map((kernel) => {
        zstd = kernel
      })
    )

  const runDecompress = (type: CompressionType, input: Uint8Array, out: Uint8Array): Effect.Effect<void, DecompressionError> =>
    Effect.suspend(() => {
      try {
        sync.decompress(type, input, out)
        return Effect.void
      } catch (error) {
        return error instanceof DecompressionError ? Effect.fail(error) : Effect.die(error)
      }
    })

  const runCompress = (
    type: CompressionType,
    input: Uint8Array,
    options?: CompressOptions
  ): Effect.Effect<Uint8Array | undefined, CompressionError> =>
    Effect.suspend(() => {
      try {
        return Effect.succeed(sync.compress(type, input, options))
      } catch (error) {
        return error instanceof CompressionError ? Effect.fail(error) : Effect.die(error)
      }
    })

  const decompress = (type: CompressionType, input: Uint8Array, out: Uint8Array): Effect.Effect<void, DecompressionError> =>
    type === CompressionType.Zstd && zstd === undefined
      ? Effect.flatMap(
          withZstd(
            (cause) =>
              new DecompressionError({
                compressionType: type,
                reason: "Unsupported",
                message: `zstd is not available: ${causeMessage(cause)}`,
                cause
              })
          ),
          () => runDecompress(type, input, out)
        )
      : runDecompress(type, input, out)

  const compress = (
    type: CompressionType,
    input: Uint8Array,
    options?: CompressOptions
  ): Effect.Effect<Uint8Array | undefined, CompressionError> =>
    type === CompressionType.Zstd && zstd === undefined
      ? Effect.flatMap(
          withZstd(
            (cause) =>
              new CompressionError({
                compressionType: type,
                reason: "Failed",
                message: `zstd is not available: ${causeMessage(cause)}`,
                cause
              })
          ),
          () => runCompress(type, input, options)
        )
      : runCompress(type, input, options)

  return { decompress, compress }
}
