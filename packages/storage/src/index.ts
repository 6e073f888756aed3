export * from "./errors.js"
export * from "./BlockStorage.js"
export * from "./validate.js"
export * from "./memory.js"
