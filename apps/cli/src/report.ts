import { errorReport } from "./progname.js"

/**
 * Prints one message line on stderr with the program's prefix, as QEMU's
 * error_report/warn_report do for each line (the prefix `execute` in
 * cli/dispatch.ts gives a failure's first line): for warnings, and for the
 * first line of a failure that QEMU reports in two error_report calls.
 */
export const reportLine = (message: string): void => errorReport(message)
