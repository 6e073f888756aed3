/**
 * ClusterCodec for any JavaScript runtime (browsers, workers, Node, Deno):
 * deflate with pako 3 (a zlib port), zstd with the libzstd wasm build of
 * @bokuweb/zstd-wasm (embedded, compiled once per realm).
 */
import { Effect, Layer } from "effect"
import { ClusterCodec, type ClusterCodecShape } from "./ClusterCodec.js"
import { makeClusterCodec } from "./internal/codec.js"
import { portableDeflateKernels } from "./internal/deflatePortable.js"
import { zstdKernel } from "./internal/zstdModule.js"

/** Builds a portable codec. The zstd wasm is compiled and instantiated by the first zstd cluster of the realm. */
export const make: Effect.Effect<ClusterCodecShape> = Effect.sync(() => makeClusterCodec(portableDeflateKernels(), () => zstdKernel()))

/** Provides ClusterCodec with pako and zstd wasm. */
export const layer: Layer.Layer<ClusterCodec> = Layer.effect(ClusterCodec, make)
