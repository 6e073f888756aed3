export * from "./rules.js"
export * from "./filter.js"
