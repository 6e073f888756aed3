export * from "./errors.js"
export * from "./BlockStorage.js"
