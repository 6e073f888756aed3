/**
 * `@qcow2/compress/runtime` under the `browser` export condition: pako and
 * the zstd wasm on the page, Web Workers for the pool. Same exports and
 * types as runtime.ts (the Node entry, whose declarations are the ones
 * published); imports nothing from `node:*`.
 */
import type * as NodeRuntime from "./runtime.js"
import * as PortableClusterCodec from "./PortableClusterCodec.js"
import { makeWebCompressionPool, type CompressionPool, type CompressionPoolOptions } from "./WebCompressionPool.js"

export type { CompressionPool, CompressionPoolOptions }

/** Which implementation this entry is. */
export const runtime: typeof NodeRuntime.runtime = "browser"

/** Builds this runtime's ClusterCodec (here pako + zstd wasm). */
export const makeRuntimeClusterCodec: typeof NodeRuntime.makeRuntimeClusterCodec = PortableClusterCodec.make

/** Provides this runtime's ClusterCodec (here pako + zstd wasm). */
export const runtimeClusterCodecLayer: typeof NodeRuntime.runtimeClusterCodecLayer = PortableClusterCodec.layer

/** Starts this runtime's compression pool in the current scope (here Web Workers). */
export const makeRuntimeCompressionPool: typeof NodeRuntime.makeRuntimeCompressionPool = makeWebCompressionPool
