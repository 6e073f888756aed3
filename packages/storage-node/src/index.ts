export * from "./errors.js"
export * from "./NodeFileStorage.js"
export * from "./NodeStorageOpener.js"
export { FileLocks } from "./lock.js"
