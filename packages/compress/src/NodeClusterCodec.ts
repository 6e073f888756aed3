/**
 * ClusterCodec for Node: deflate with node:zlib (native zlib), zstd with the
 * libzstd wasm build (Node 20's zlib has no zstd).
 */
import { Effect, Layer } from "effect"
import { ClusterCodec, type ClusterCodecShape } from "./ClusterCodec.js"
import { makeClusterCodec } from "./internal/codec.js"
import { nodeDeflateKernels, nodeInflateRaw } from "./internal/nodeKernels.js"
import { zstdKernel } from "./internal/zstdModule.js"

/** Builds a Node codec. The zstd wasm is compiled and instantiated by the first zstd cluster of the process. */
export const make: Effect.Effect<ClusterCodecShape> = Effect.sync(() => makeClusterCodec(nodeDeflateKernels(), () => zstdKernel(nodeInflateRaw)))

/** Provides ClusterCodec with node:zlib and zstd wasm. */
export const layer: Layer.Layer<ClusterCodec> = Layer.effect(ClusterCodec, make)
