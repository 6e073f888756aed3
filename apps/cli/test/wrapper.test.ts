/**
 * The `./qcow2` wrapper at the repository root, run in a miniature checkout
 * (a copy of the script, stub sources, a stub build script that counts its
 * runs and a stub `pnpm` that logs its calls), so the real bundle is never
 * rebuilt under the other tests: it bundles when there is no bundle, not
 * again while nothing changed, again when a source, a manifest, the build
 * script or the lockfile is newer than the bundle, installs first when the
 * lockfile is newer than node_modules, and works through a symlink on PATH.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { CLI_DIR, makeTempDir } from "./helpers.js"

const WRAPPER = path.resolve(CLI_DIR, "../..", "qcow2")

/** The stub build: dist/bin/qcow2.cjs prints its arguments, the cwd and the build number. */
const BUILD = `import * as fs from "node:fs"
const n = Number(fs.existsSync("../../builds") ? fs.readFileSync("../../builds", "utf8") : "0") + 1
fs.writeFileSync("../../builds", String(n))
fs.mkdirSync("dist/bin", { recursive: true })
fs.writeFileSync("dist/bin/qcow2.cjs", "console.log(JSON.stringify({ build: " + n + ", args: process.argv.slice(2), cwd: process.cwd() }))")
`

const checkout = (): { root: string; bin: string } => {
  const root = makeTempDir("qcow2-wrapper-")
  const write = (file: string, text: string): void => {
    fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true })
    fs.writeFileSync(path.join(root, file), text)
  }
  fs.copyFileSync(WRAPPER, path.join(root, "qcow2"))
  fs.chmodSync(path.join(root, "qcow2"), 0o755)
  write("pnpm-lock.yaml", "lockfileVersion: '9.0'\n")
  write("apps/cli/package.json", "{}\n")
  write("apps/cli/build.mjs", BUILD)
  write("apps/cli/src/main.ts", "export {}\n")
  write("packages/format/package.json", "{}\n")
  write("packages/format/src/index.ts", "export {}\n")
  write("node_modules/.modules.yaml", "{}\n")
  // A pnpm that says it is the pinned version and logs what it was asked to do.
  const bin = path.join(root, "bin")
  write("bin/pnpm", `#!/bin/sh\nif [ "$1" = "-v" ]; then echo 12.4.2; exit 0; fi\necho "$*" >> "${root}/pnpm-calls"\n`)
  fs.chmodSync(path.join(bin, "pnpm"), 0o755)
  return { root, bin }
}

interface Output {
  readonly build: number
  readonly args: ReadonlyArray<string>
  readonly cwd: string
}

const run = (c: { root: string; bin: string }, args: ReadonlyArray<string>, command = path.join(c.root, "qcow2"), cwd = c.root): Output => {
  const r = spawnSync(command, args, { cwd, encoding: "utf8", env: { ...process.env, PATH: `${c.bin}:${process.env["PATH"]}` } })
  if (r.status !== 0) throw new Error(`wrapper failed (${r.status}): ${r.stderr}`)
  return JSON.parse(r.stdout) as Output
}

/** Makes `files` (the bundle by default) ten seconds older than `than`, as if `than` was edited after the build. */
const olderThan = (root: string, than: string, files: ReadonlyArray<string> = ["apps/cli/dist/bin/qcow2.cjs"]): void => {
  const t = new Date(fs.statSync(path.join(root, than)).mtime.getTime() - 10_000)
  for (const file of files) fs.utimesSync(path.join(root, file), t, t)
}

const pnpmCalls = (root: string): string[] =>
  fs.existsSync(path.join(root, "pnpm-calls")) ? fs.readFileSync(path.join(root, "pnpm-calls"), "utf8").trim().split("\n") : []

describe("./qcow2", () => {
  it("bundles on first use, then runs the bundle as it is while nothing changed", () => {
    const c = checkout()
    expect(run(c, ["info", "a b.qcow2"])).toEqual({ build: 1, args: ["info", "a b.qcow2"], cwd: c.root })
    expect(run(c, ["-V"]).build).toBe(1)
    expect(pnpmCalls(c.root)).toEqual([])
  })

  it.each(["apps/cli/src/main.ts", "packages/format/src/index.ts", "packages/format/package.json", "apps/cli/build.mjs", "apps/cli/package.json"])(
    "rebundles when %s is newer than the bundle",
    (file) => {
      const c = checkout()
      expect(run(c, []).build).toBe(1)
      olderThan(c.root, file)
      expect(run(c, []).build).toBe(2)
      expect(run(c, []).build).toBe(2)
      expect(pnpmCalls(c.root)).toEqual([])
    }
  )

  it("installs the locked dependencies first when the lockfile is newer than node_modules", () => {
    const c = checkout()
    expect(run(c, []).build).toBe(1)
    olderThan(c.root, "pnpm-lock.yaml", ["apps/cli/dist/bin/qcow2.cjs", "node_modules/.modules.yaml"])
    expect(run(c, []).build).toBe(2)
    expect(pnpmCalls(c.root)).toEqual(["install --frozen-lockfile"])
    expect(run(c, []).build).toBe(2)
    expect(pnpmCalls(c.root)).toHaveLength(1)
  })

  it("runs through a symlink on PATH, in the caller's directory", () => {
    const c = checkout()
    const elsewhere = makeTempDir("qcow2-wrapper-cwd-")
    fs.symlinkSync(path.join(c.root, "qcow2"), path.join(c.bin, "qcow2"))
    expect(run(c, ["info", "x.qcow2"], "qcow2", elsewhere)).toEqual({ build: 1, args: ["info", "x.qcow2"], cwd: fs.realpathSync(elsewhere) })
  })
})
