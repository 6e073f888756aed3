/**
 * The README's example is a real file: run it with node (through the
 * package's built `dist`, as a user's script would import it) and check
 * what it prints and the images it leaves.
 */
import { execFileSync } from "node:child_process"
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { qemuCheck, qemuCompare, tempDir } from "./helpers.js"

const packageDir = resolve(import.meta.dirname, "..")

describe("examples", () => {
  const tmp = tempDir()
  beforeAll(() => {
    // `pnpm test` builds first; a lone vitest run may not have.
    if (!existsSync(join(packageDir, "dist/index.js"))) execFileSync("pnpm", ["run", "build"], { cwd: packageDir, stdio: "inherit" })
  })
  afterAll(() => tmp.cleanup())

  it("examples/quickstart.mjs runs and leaves a clean image and its raw copy", () => {
    const out = execFileSync(process.execPath, [join(packageDir, "examples/quickstart.mjs"), tmp.dir], { cwd: packageDir, encoding: "utf8" })
    expect(out).toBe(["hello, qcow2", "qcow2 67108864 65536", "corruptions 0, leaks 0", "converted", "refused: NotQcow2", ""].join("\n"))
    expect(qemuCheck(tmp.path("disk.qcow2")).exitCode).toBe(0)
    expect(qemuCompare("-F", "raw", tmp.path("disk.qcow2"), tmp.path("disk.raw"))).toBe(0)
  })
})
