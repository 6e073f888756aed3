export * from "./WebCompressionPool.js"
