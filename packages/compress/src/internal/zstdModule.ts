import { inflateRaw } from "pako"
import { decodeZstdFrame } from "./zstdDecode.js"
import { createZstdKernel, type ZstdKernel } from "./zstdKernel.js"
import { ZSTD_WASM_DEFLATE_BASE64, ZSTD_WASM_SIZE } from "./zstdWasmData.js"

const decodeBase64 = (text: string): Uint8Array => {
  const binary = atob(text)
  const bytes = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes
}

/** Raw-deflate decoder of the embedded binary: pako by default; Node passes native zlib (~3 ms instead of pako's 60-300 ms while cold). */
export type RawInflate = (data: Uint8Array) => Uint8Array

/** The embedded zstd wasm binary (decoded on each call). */
export const zstdWasmBytes = (inflate: RawInflate = inflateRaw): Uint8Array => {
  const bytes = inflate(decodeBase64(ZSTD_WASM_DEFLATE_BASE64))
  if (bytes.length !== ZSTD_WASM_SIZE) {
    throw new Error(`embedded zstd wasm decodes to ${bytes.length} bytes, expected ${ZSTD_WASM_SIZE}`)
  }
  return bytes
}

let compiled: Promise<WebAssembly.Module> | undefined

/**
 * The compiled zstd module, compiled once per realm (asynchronously: browsers
 * limit synchronous compiles); `inflate` decodes the embedded binary.
 */
export const zstdWasmModule = (inflate?: RawInflate): Promise<WebAssembly.Module> => {
  if (compiled === undefined) {
    const pending = Promise.resolve().then(() => WebAssembly.compile(zstdWasmBytes(inflate) as Uint8Array<ArrayBuffer>))
    pending.catch(() => {
      compiled = undefined
    })
    compiled = pending
  }
  return compiled
}

let kernel: Promise<ZstdKernel> | undefined

/**
 * Decodes with the TypeScript decoder; compression needs the wasm. For
 * runtimes where the wasm cannot be compiled or instantiated.
 */
const decodeOnlyKernel = (cause: unknown): ZstdKernel => ({
  compress: () => {
    throw new Error(
      `zstd compression needs WebAssembly, which failed here: ${cause instanceof Error ? cause.message : String(cause)}`
    )
  },
  decompressFrame: decodeZstdFrame
})

/**
 * The realm's zstd kernel: one wasm instance (one linear memory), created on
 * the first call and shared by every codec of the realm (kernel calls run to
 * completion synchronously, so sharing is safe).
 *
 * When the wasm cannot be instantiated (typically: V8 cannot reserve the
 * ~10 GiB of address space it takes for a wasm memory under `ulimit -v`, see
 * makeClusterCodec), the kernel decodes with the TypeScript decoder of
 * zstdDecode.ts and fails to compress. That outcome is not cached: the next
 * call (the next codec) tries the wasm again.
 */
export const zstdKernel = (inflate?: RawInflate): Promise<ZstdKernel> => {
  if (kernel === undefined) {
    const pending = zstdWasmModule(inflate).then(createZstdKernel)
    pending.catch(() => {
      kernel = undefined
    })
    kernel = pending
  }
  return kernel.catch(decodeOnlyKernel)
}
