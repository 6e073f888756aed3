export * from "./rules.js"
export * from "./filter.js"
export * from "./breakpoints.js"
