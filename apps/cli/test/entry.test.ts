/**
 * The executable's V8 code cache (src/entry.ts): written after the first run
 * of a subcommand, used by later runs, replaced when it is damaged, and
 * never needed (a read-only installation runs without one).
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { CLI_DIR, buildBundle, makeTempDir, qemu } from "./helpers.js"

const made: Array<string> = []
const tempDir = (prefix: string): string => {
  const dir = makeTempDir(prefix)
  made.push(dir)
  return dir
}
afterAll(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

/** A private copy of the built CLI (dist/ as it is laid out), so that its cache directory is this test's alone. */
const install = (): string => {
  const dir = tempDir("qcow2-entry-")
  fs.mkdirSync(path.join(dir, "bin"))
  for (const file of ["qcow2.mjs", "qcow2.cjs", "bin/qcow2.cjs"]) fs.copyFileSync(path.join(CLI_DIR, "dist", file), path.join(dir, file))
  return dir
}

/** Runs the executable: the package's bin (CommonJS), or the ES module build. */
const run = (dir: string, args: ReadonlyArray<string>, entry: "bin/qcow2.cjs" | "qcow2.mjs" = "bin/qcow2.cjs") =>
  spawnSync(process.execPath, [path.join(dir, entry), ...args], { cwd: dir, encoding: "utf8" })

const cacheFiles = (dir: string): string[] => {
  const cache = path.join(dir, "cache")
  return fs.existsSync(cache) ? fs.readdirSync(cache).sort() : []
}

describe("code cache of the executable", () => {
  let image: string
  beforeAll(() => {
    buildBundle()
    const d = tempDir("qcow2-entry-img-")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "1M"])
    image = path.join(d, "a.qcow2")
  })

  it("is written per subcommand by the first run and reused", () => {
    const dir = install()
    const expected = qemu(dir, "qemu-img", ["info", image]).stdout.split("\n")[1]
    const first = run(dir, ["info", image])
    expect(first.status).toBe(0)
    expect(first.stdout.split("\n")[1]).toBe(expected)
    const files = cacheFiles(dir)
    expect(files).toHaveLength(1)
    expect(files[0]).toMatch(/-info\.v8$/)
    const written = fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs
    expect(run(dir, ["info", image]).status).toBe(0)
    expect(fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs).toBe(written)
    expect(run(dir, ["--version"]).stdout).toBe("qcow2 version 0.1.0\n")
    expect(cacheFiles(dir)).toHaveLength(2)
  })

  it("is reused by a command run without TurboFan (the flag it sets is part of the cache's key)", () => {
    const dir = install()
    const out = path.join(dir, "out.raw")
    expect(run(dir, ["convert", "-O", "raw", image, out]).status).toBe(0)
    const files = cacheFiles(dir)
    expect(files).toHaveLength(1)
    expect(files[0]).toMatch(/-convert\.v8$/)
    const written = fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs
    fs.rmSync(out)
    expect(run(dir, ["convert", "-O", "raw", image, out]).status).toBe(0)
    expect(fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs).toBe(written)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, out]).status).toBe(0)
  })

  it("a convert that names a secret (the image may be encrypted) runs with TurboFan, with a cache of its own; both caches are reused", () => {
    const dir = install()
    const out = path.join(dir, "out.raw")
    const secret = ["--object", "secret,id=s,data=unused"]
    expect(run(dir, ["convert", "-O", "raw", image, out]).status).toBe(0)
    fs.rmSync(out)
    expect(run(dir, ["convert", ...secret, "-O", "raw", image, out]).status).toBe(0)
    const files = cacheFiles(dir)
    expect(files.map((f) => f.replace(/^.*-(convert(-turbofan)?)\.v8$/, "$1")).sort()).toEqual(["convert", "convert-turbofan"])
    const written = files.map((f) => fs.statSync(path.join(dir, "cache", f)).mtimeMs)
    for (const args of [["convert", "-O", "raw", image, out], ["convert", ...secret, "-O", "raw", image, out]]) {
      fs.rmSync(out)
      expect(run(dir, args).status).toBe(0)
    }
    expect(files.map((f) => fs.statSync(path.join(dir, "cache", f)).mtimeMs)).toEqual(written)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "qcow2", "-F", "raw", image, out]).status).toBe(0)
  })

  it("is the same program as an ES module (dist/qcow2.mjs), which shares the bin's cache", () => {
    const dir = install()
    const viaBin = run(dir, ["info", "--output=json", image])
    expect(viaBin.status).toBe(0)
    const files = cacheFiles(dir)
    expect(files).toHaveLength(1)
    const written = fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs
    const viaModule = run(dir, ["info", "--output=json", image], "qcow2.mjs")
    expect(viaModule).toMatchObject({ status: 0, stdout: viaBin.stdout, stderr: "" })
    expect(cacheFiles(dir)).toEqual(files)
    expect(fs.statSync(path.join(dir, "cache", files[0]!)).mtimeMs).toBe(written)
  })

  it("replaces a damaged cache and still runs", () => {
    const dir = install()
    expect(run(dir, ["info", image]).status).toBe(0)
    const file = path.join(dir, "cache", cacheFiles(dir)[0]!)
    const garbage = Buffer.alloc(fs.statSync(file).size, 0x5a)
    fs.writeFileSync(file, garbage)
    const r = run(dir, ["info", "--output=json", image])
    expect(r.status).toBe(0)
    expect(JSON.parse(r.stdout)["virtual-size"]).toBe(1024 * 1024)
    expect(fs.readFileSync(file).equals(garbage)).toBe(false)
  })

  it("runs without a cache when it cannot write one", () => {
    const dir = install()
    fs.writeFileSync(path.join(dir, "cache"), "not a directory")
    const r = run(dir, ["info", image])
    expect(r.status).toBe(0)
    expect(r.stderr).toBe("")
    expect(r.stdout).toContain("file format: qcow2")
  })
})
