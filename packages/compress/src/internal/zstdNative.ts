/**
 * zstd through the system's libzstd (libzstd.so.1, which qemu-img itself
 * links on Debian), bound with koffi: the same ZstdKernel as the wasm
 * build's, at native speed. On this project's 2-core machine, 64 KiB
 * clusters of mixed data at level 3: ~280 µs per cluster against the wasm
 * build's ~560 µs to compress, ~75 µs against ~200 µs to decompress.
 *
 * `createNativeZstdKernel` must stay self-contained (no imports, no
 * references to anything outside its body): the compression pool
 * serialises it into the code of its worker threads, as it does the wasm
 * kernel (zstdKernel.ts), and each worker binds its own contexts.
 */
import { fileURLToPath } from "node:url"
import type { ZstdKernel } from "./zstdKernel.js"

/** A C function bound by koffi: size_t results above 2^53 (zstd's error codes) come back as bigint. */
type NativeFunction = (...args: ReadonlyArray<unknown>) => number | bigint

/** What the kernel needs of koffi. */
export interface KoffiLoader {
  readonly load: (library: string) => { readonly func: (declaration: string) => NativeFunction }
}

/**
 * Binds libzstd with `koffi` and returns a kernel with one compression and
 * one decompression context; throws when the library or a symbol cannot be
 * had. Same calls as the wasm kernel (ZSTD_compressCCtx,
 * ZSTD_decompressDCtx on exactly one frame), so the same frames and the same
 * verdicts: the output is always bounded by the caller's capacity.
 */
export function createNativeZstdKernel(koffi: KoffiLoader): ZstdKernel {
  const library = koffi.load("libzstd.so.1")
  const createCCtx = library.func("void *ZSTD_createCCtx(void)")
  const createDCtx = library.func("void *ZSTD_createDCtx(void)")
  const compressCCtx = library.func("size_t ZSTD_compressCCtx(void *cctx, _Out_ uint8_t *dst, size_t capacity, const uint8_t *src, size_t length, int level)")
  const decompressDCtx = library.func("size_t ZSTD_decompressDCtx(void *dctx, _Out_ uint8_t *dst, size_t capacity, const uint8_t *src, size_t length)")
  const isError = library.func("unsigned int ZSTD_isError(size_t code)")
  const errorCode = library.func("int ZSTD_getErrorCode(size_t code)")
  const cctx = createCCtx()
  const dctx = createDCtx()
  if (cctx === null || dctx === null) throw new Error("zstd: cannot create contexts")
  // One output buffer, grown on demand: koffi writes an _Out_ buffer in place.
  let scratch = new Uint8Array(0)
  return {
    compress: (input, capacity, level) => {
      if (scratch.length < capacity) scratch = new Uint8Array(capacity)
      const r = compressCCtx(cctx, scratch, capacity, input, input.length, level)
      if (isError(r) !== 0) {
        const code = Number(errorCode(r))
        if (code === 70) return undefined // dstSize_tooSmall: does not fit in capacity
        throw new Error("zstd: compression failed (zstd error " + code + ")")
      }
      return scratch.slice(0, Number(r))
    },
    decompressFrame: (frame, out) => {
      const r = decompressDCtx(dctx, out, out.length, frame, frame.length)
      return isError(r) !== 0 ? -Number(errorCode(r)) : Number(r)
    }
  }
}

/** Where koffi's entry is, for worker threads (their `require` starts from the working directory); undefined when it cannot be found. */
export const koffiEntry = (): string | undefined => {
  try {
    // The CLI's CommonJS bundle has `require`; this package's ES modules have import.meta.resolve (Node ≥ 20.6).
    return typeof require === "function" ? require.resolve("koffi") : fileURLToPath(import.meta.resolve("koffi"))
  } catch {
    return undefined
  }
}

let loaded: Promise<ZstdKernel | undefined> | undefined

/**
 * The process's native kernel for the main thread, bound on first use;
 * undefined where it cannot be had (not Linux on x64/arm64, koffi or
 * libzstd.so.1 missing), and the caller then uses the wasm build.
 */
export const nativeZstdKernel = (): Promise<ZstdKernel | undefined> =>
  (loaded ??= (async () => {
    if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) return undefined
    try {
      const imported = (await import("koffi")) as { readonly default?: KoffiLoader } & Partial<KoffiLoader>
      return createNativeZstdKernel((imported.default ?? imported) as KoffiLoader)
    } catch {
      return undefined
    }
  })())
