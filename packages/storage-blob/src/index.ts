export * from "./BlobStorage.js"
