/**
 * `@qcow2/compress/runtime` under Node (the `default` export condition):
 * the codec and compression pool that run best here, node:zlib and worker
 * threads. Under the `browser` condition the same path resolves to
 * runtime.browser.ts (pako and Web Workers), with the same exports and
 * types, so code above this package picks the right one by its bundler's or
 * runtime's conditions, not by sniffing at run time.
 */
import type { Effect, Layer, Scope } from "effect"
import type { ClusterCodec, ClusterCodecShape } from "./ClusterCodec.js"
import { makeCompressionPool, type CompressionPool, type CompressionPoolOptions } from "./CompressionPool.js"
import * as NodeClusterCodec from "./NodeClusterCodec.js"

export type { CompressionPool, CompressionPoolOptions }

/** Which implementation this entry is. */
export const runtime: "node" | "browser" = "node"

/** Builds this runtime's ClusterCodec (here node:zlib + native or wasm zstd). */
export const makeRuntimeClusterCodec: Effect.Effect<ClusterCodecShape> = NodeClusterCodec.make

/** Provides this runtime's ClusterCodec (here node:zlib + native or wasm zstd). */
export const runtimeClusterCodecLayer: Layer.Layer<ClusterCodec> = NodeClusterCodec.layer

/** Starts this runtime's compression pool in the current scope (here worker threads). */
export const makeRuntimeCompressionPool: (options?: CompressionPoolOptions) => Effect.Effect<CompressionPool, never, Scope.Scope> =
  makeCompressionPool
