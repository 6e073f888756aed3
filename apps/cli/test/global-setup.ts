import { execFileSync } from "node:child_process"
import * as path from "node:path"

/** Builds dist/qcow2.mjs once, before any test file runs: the bundle is what the tests exercise. */
export default function setup(): void {
  execFileSync(process.execPath, ["build.mjs"], { cwd: path.resolve(import.meta.dirname, ".."), stdio: "inherit" })
}
