/**
 * zstd through the system's libzstd (libzstd.so.1, which qemu-img itself
 * links on Debian), bound with koffi: the same ZstdKernel as the wasm
 * build's, at native speed, and compressors for libuv's thread pool. On
 * this project's 2-core machine, 64 KiB clusters of mixed data at level 3:
 * ~280 µs per cluster against the wasm build's ~560 µs to compress, ~75 µs
 * against ~200 µs to decompress.
 */
import { koffi, type Koffi, type NativeFunction } from "@qcow2/native"
import type { ClusterCompressor } from "./clusterQueue.js"
import type { ZstdKernel } from "./zstdKernel.js"


/** zstd's error code for an output that does not fit (ZSTD_error_dstSize_tooSmall). */
const DST_SIZE_TOO_SMALL = 70

/** The libzstd calls used here. Buffers are passed as pointers to their memory: koffi neither copies nor converts them. */
interface Libzstd {
  readonly createCCtx: NativeFunction
  readonly freeCCtx: NativeFunction
  readonly createDCtx: NativeFunction
  readonly compressCCtx: NativeFunction
  readonly decompressDCtx: NativeFunction
  /** zstd's error code of a result (0: not an error). */
  readonly errorOf: (result: number | bigint) => number
}

const bindLibzstd = (loader: Koffi): Libzstd => {
  const library = loader.load("libzstd.so.1")
  const isError = library.func("unsigned int ZSTD_isError(size_t code)")
  const errorCode = library.func("int ZSTD_getErrorCode(size_t code)")
  return {
    createCCtx: library.func("void *ZSTD_createCCtx(void)"),
    freeCCtx: library.func("size_t ZSTD_freeCCtx(void *cctx)"),
    createDCtx: library.func("void *ZSTD_createDCtx(void)"),
    compressCCtx: library.func("size_t ZSTD_compressCCtx(void *cctx, uint8_t *dst, size_t capacity, const uint8_t *src, size_t length, int level)"),
    decompressDCtx: library.func("size_t ZSTD_decompressDCtx(void *dctx, uint8_t *dst, size_t capacity, const uint8_t *src, size_t length)"),
    // A length is a number; zstd's error codes are within 120 of 2^64, so koffi gives them as bigint.
    errorOf: (result) => (typeof result === "number" || isError(result) === 0 ? 0 : Number(errorCode(result)))
  }
}

/**
 * A kernel with one compression and one decompression context over
 * `zstd`. Same calls as the wasm kernel (ZSTD_compressCCtx,
 * ZSTD_decompressDCtx on exactly one frame), so the same frames and the
 * same verdicts: the output is always bounded by the caller's capacity.
 */
const nativeKernel = (zstd: Libzstd): ZstdKernel => {
  const cctx = zstd.createCCtx()
  const dctx = zstd.createDCtx()
  if (cctx === null || dctx === null) throw new Error("zstd: cannot create contexts")
  // One output buffer, grown on demand, written in place.
  let scratch = new Uint8Array(0)
  return {
    compress: (input, capacity, level) => {
      if (scratch.length < capacity) scratch = new Uint8Array(capacity)
      const r = zstd.compressCCtx(cctx, scratch, capacity, input, input.length, level)
      const code = zstd.errorOf(r)
      if (code === DST_SIZE_TOO_SMALL) return undefined
      if (code !== 0) throw new Error("zstd: compression failed (zstd error " + code + ")")
      return scratch.slice(0, Number(r))
    },
    decompressFrame: (frame, out) => {
      const r = zstd.decompressDCtx(dctx, out, out.length, frame, frame.length)
      const code = zstd.errorOf(r)
      return code !== 0 ? -code : Number(r)
    }
  }
}

/**
 * Compressors for libuv's thread pool over `zstd`: each owns a compression
 * context and compresses with koffi's asynchronous call (a Node-API async
 * work item), reading the cluster and writing the result in place. Against
 * worker threads this saves an isolate per thread (~10 MiB each) and the
 * messages. Same call and capacity as the kernel (cluster_size - 1), so
 * the same frames and verdicts.
 */
const asyncCompressors =
  (zstd: Libzstd) =>
  (level: number, clusterSize: number): ClusterCompressor => {
    const cctx = zstd.createCCtx()
    if (cctx === null) throw new Error("zstd: cannot create a compression context")
    let broken = false
    return {
      level,
      clusterSize,
      get broken() {
        return broken
      },
      compress: (input, into, done) => {
        zstd.compressCCtx.async(cctx, into, input.length - 1, input, input.length, level, (error: unknown, result: number | bigint) => {
          if (error !== null && error !== undefined) {
            broken = true
            return done(error instanceof Error ? error : new Error(String(error)), undefined)
          }
          const code = zstd.errorOf(result)
          if (code === 0) done(undefined, Number(result))
          else if (code === DST_SIZE_TOO_SMALL) done(undefined, undefined)
          else done(new Error("zstd: compression failed (zstd error " + code + ")"), undefined)
        })
      },
      close: () => {
        zstd.freeCCtx(cctx)
      }
    }
  }

/** The process's native zstd: a kernel for this thread and compressors for libuv's threads. */
export interface NativeZstd {
  readonly kernel: ZstdKernel
  readonly compressors: (level: number, clusterSize: number) => ClusterCompressor
}

let loaded: Promise<NativeZstd | undefined> | undefined

/**
 * libzstd bound on first use; undefined where it cannot be had (not Linux
 * on x64/arm64, koffi or libzstd.so.1 missing), and the caller then uses
 * the wasm build.
 */
export const nativeZstd = (): Promise<NativeZstd | undefined> =>
  (loaded ??= (async () => {
    if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) return undefined
    try {
      const loader = koffi()
      if (loader === undefined) return undefined
      const zstd = bindLibzstd(loader)
      return { kernel: nativeKernel(zstd), compressors: asyncCompressors(zstd) }
    } catch {
      return undefined
    }
  })())

/** The process's native kernel (see `nativeZstd`). */
export const nativeZstdKernel = async (): Promise<ZstdKernel | undefined> => (await nativeZstd())?.kernel
