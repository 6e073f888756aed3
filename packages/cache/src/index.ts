export * from "./TableCache.js"
