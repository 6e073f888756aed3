/**
 * ClusterCodec for any JavaScript runtime (browsers, workers, Node, Deno):
 * deflate with pako 3 (a zlib port), zstd with the libzstd wasm build of
 * @bokuweb/zstd-wasm (embedded, compiled once per realm).
 */
import { Effect, Layer } from "effect"
import { ClusterCodec, type ClusterCodecShape } from "./ClusterCodec.js"
import { makeClusterCodec } from "./internal/codec.js"
import { makePortableDeflate, makePortableInflate } from "./internal/deflatePortable.js"
import { createZstdKernel } from "./internal/zstdKernel.js"
import { zstdWasmModule } from "./internal/zstdModule.js"

/** Builds a portable codec (compiles the zstd wasm on first use in the realm). */
export const make: Effect.Effect<ClusterCodecShape> = Effect.gen(function* () {
  const module = yield* Effect.promise(() => zstdWasmModule())
  return makeClusterCodec({
    inflate: makePortableInflate(),
    deflate: makePortableDeflate(),
    zstd: createZstdKernel(module)
  })
})

/** Provides ClusterCodec with pako and zstd wasm. */
export const layer: Layer.Layer<ClusterCodec> = Layer.effect(ClusterCodec, make)
