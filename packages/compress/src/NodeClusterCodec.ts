/**
 * ClusterCodec for Node: deflate with node:zlib (native zlib), zstd with the
 * system's libzstd through koffi where it loads, else the libzstd wasm
 * build (Node 20's zlib has no zstd).
 */
import { Effect, Layer } from "effect"
import { ClusterCodec, type ClusterCodecShape } from "./ClusterCodec.js"
import { makeClusterCodec } from "./internal/codec.js"
import { nodeDeflateKernels, nodeInflateRaw } from "./internal/nodeKernels.js"
import { zstdKernel } from "./internal/zstdModule.js"
import { nativeZstdKernel } from "./internal/zstdNative.js"

/** Builds a Node codec. The zstd kernel (native or wasm) is loaded by the first zstd cluster of the process. */
export const make: Effect.Effect<ClusterCodecShape> = Effect.sync(() =>
  makeClusterCodec(nodeDeflateKernels(), async () => (await nativeZstdKernel()) ?? (await zstdKernel(nodeInflateRaw)))
)

/** Provides ClusterCodec with node:zlib and native (or wasm) zstd. */
export const layer: Layer.Layer<ClusterCodec> = Layer.effect(ClusterCodec, make)
