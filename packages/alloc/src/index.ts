export * from "./errors.js"
export * from "./Refcounts.js"
