export * from "./index.js"
export * as NodeClusterCodec from "./NodeClusterCodec.js"
export * from "./CompressionPool.js"
