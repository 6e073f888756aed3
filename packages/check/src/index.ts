export type { CheckResult } from "./result.js"
export { CheckError, type CheckErrorReason } from "./errors.js"
export { type CheckOptions, MAX_MESSAGES, checkQcow2, rebuildRefcounts } from "./check.js"
