/**
 * The packages as npm users get them: every publishable workspace package is
 * packed with `pnpm pack`, the tarballs are installed with npm into a fresh
 * project in the OS temp directory (outside the workspace, so nothing
 * resolves through workspace links or the `@qcow2/source` condition), and
 * that project then
 * - runs a Promise API script (@qcow2/node) and an Effect API script (layers
 *   wired by hand) whose images qemu-img checks and compares with twins
 *   qemu-io wrote;
 * - type-checks a TypeScript consumer against the published .d.ts files;
 * - bundles a browser consumer of @qcow2/format with esbuild, which must
 *   pull in no other package;
 * - runs the CLI through the `qcow2` bin npm linked.
 * The manifests and file lists of the tarballs are checked too.
 *
 * The devDependencies on the workspace packages, and the CLI's build in
 * this package's turbo.json (a devDependency on the CLI would link its
 * `qemu-img` bin into node_modules/.bin, ahead of QEMU's on the PATH of
 * `pnpm test`), only order turbo's builds before this test; nothing here
 * imports them.
 */
import { execFileSync, spawnSync } from "node:child_process"
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { build } from "esbuild"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { exportPaths, importedPackages, installConsumer, listFiles, pack, publishableDirs, readManifest, withoutSourceCondition, workspaceRoot, type Manifest } from "./tarballs.js"

const consumerSources = join(import.meta.dirname, "../consumer")
const qemuImg = (...args: string[]): string => execFileSync("qemu-img", args, { encoding: "utf8" })
/** Exit code of a qemu-img command (0 = success / identical). */
const qemuImgStatus = (...args: string[]): number => spawnSync("qemu-img", args, { encoding: "utf8" }).status ?? -1
const qemuIo = (...args: string[]): string => execFileSync("qemu-io", args, { encoding: "utf8" })

describe("packed tarballs installed with npm outside the workspace", () => {
  const root = mkdtempSync(join(tmpdir(), "qcow2-packaging-"))
  const tarballDir = join(root, "tarballs")
  const project = join(root, "consumer")
  const images = join(root, "images")
  /** Workspace directory → its package's name. */
  const packages = new Map<string, string>()
  const installed = (name: string) => join(project, "node_modules", name)
  const runNode = (script: string) => JSON.parse(execFileSync(process.execPath, [join(project, script), images], { cwd: project, encoding: "utf8" })) as Record<string, unknown>

  beforeAll(() => {
    for (const dir of [tarballDir, project, images]) mkdirSync(dir)
    const tarballs = new Map<string, string>()
    const started = performance.now()
    for (const dir of publishableDirs()) {
      const name = readManifest(join(workspaceRoot, dir)).name
      packages.set(dir, name)
      tarballs.set(name, pack(dir, tarballDir))
    }
    const packed = performance.now()
    installConsumer(project, tarballs)
    for (const file of readdirSync(consumerSources)) copyFileSync(join(consumerSources, file), join(project, file))
    console.log(`packed ${tarballs.size} packages in ${((packed - started) / 1000).toFixed(1)} s, npm install ${((performance.now() - packed) / 1000).toFixed(1)} s`)
  })
  afterAll(() => rmSync(root, { recursive: true, force: true }))

  it("every package ships a complete manifest and only its dist, README and LICENSE (and src for the source maps)", () => {
    const license = readFileSync(join(workspaceRoot, "LICENSE"), "utf8")
    expect(packages.size).toBeGreaterThanOrEqual(16)
    for (const [dir, name] of packages) {
      const pkgDir = installed(name)
      const text = readFileSync(join(pkgDir, "package.json"), "utf8")
      const manifest = JSON.parse(text) as Manifest
      expect(text, name).not.toContain("@qcow2/source")
      // publishConfig.exports repeats the workspace's exports without the source condition: nothing added to one may be missing from the other.
      const workspaceExports = readManifest(join(workspaceRoot, dir)).exports
      if (workspaceExports !== undefined) expect(manifest.exports, name).toEqual(withoutSourceCondition(workspaceExports))
      expect(text, name).not.toContain("workspace:")
      expect(manifest.license, name).toBe("MIT")
      expect(manifest.description?.length, name).toBeGreaterThan(20)
      expect(manifest.author, name).toBeTruthy()
      expect(manifest.repository?.directory, name).toBe(dir)
      expect(manifest.keywords, name).toContain("qcow2")
      expect(manifest.engines?.node, name).toBe(">=20")
      expect(readFileSync(join(pkgDir, "LICENSE"), "utf8"), name).toBe(license)
      expect(existsSync(join(pkgDir, "README.md")), name).toBe(true)
      const files = listFiles(pkgDir)
      for (const file of files) expect(file, name).toMatch(/^(package\.json|README\.md|LICENSE|dist\/.+|src\/.+\.ts)$/)
      expect(files.some((file) => /(^|\/)test\/|\.test\.|vitest|tsconfig/.test(file)), name).toBe(false)
      // effect is a peer, so an Effect app and these packages share one copy.
      expect(manifest.dependencies?.effect, name).toBeUndefined()
      for (const target of [...Object.values(manifest.exports ?? {}).flatMap(exportPaths), ...Object.values(manifest.bin ?? {})]) {
        expect(existsSync(join(pkgDir, target)), `${name}: ${target}`).toBe(true)
      }
      if (dir.startsWith("packages/")) {
        expect(manifest.sideEffects, name).toBe(false)
        const main = manifest.exports?.["."]
        expect(typeof main === "object" && main.types, name).toMatch(/^\.\/dist\/.+\.d\.ts$/)
      }
    }
  })

  it("every package a built file imports is declared (dependency, peer or itself)", () => {
    for (const name of packages.values()) {
      const pkgDir = installed(name)
      const manifest = readManifest(pkgDir)
      const declared = new Set([name, ...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {})])
      for (const file of listFiles(pkgDir).filter((f) => /^dist\/.+\.(m?js|cjs|d\.ts)$/.test(f))) {
        for (const imported of importedPackages(readFileSync(join(pkgDir, file), "utf8"))) {
          expect(declared.has(imported), `${name}/${file} imports ${imported}`).toBe(true)
        }
      }
    }
  })

  it("npm installed every @qcow2 package from its tarball and one copy of effect", () => {
    const lock = JSON.parse(readFileSync(join(project, "node_modules/.package-lock.json"), "utf8")) as { packages: Record<string, { resolved?: string }> }
    const qcow2Entries = Object.entries(lock.packages).filter(([path]) => path.includes("node_modules/@qcow2/"))
    expect(qcow2Entries.map(([path]) => path).sort()).toEqual([...packages.values()].map((name) => `node_modules/${name}`).sort())
    for (const [path, entry] of qcow2Entries) expect(entry.resolved, path).toMatch(/^file:/)
    expect(Object.keys(lock.packages).filter((path) => /(^|\/)node_modules\/effect$/.test(path))).toEqual(["node_modules/effect"])
  })

  it("a Promise API script creates, writes, reads, checks and converts an image that qemu-img checks and compares equal", () => {
    const result = runNode("promise-api.mjs")
    const image = join(images, "promise.qcow2")
    expect(result.readBack).toBe(true)
    expect(result.check).toMatchObject({ checkErrors: 0, corruptions: 0, leaks: 0 })
    expect(result.info).toMatchObject({ format: "qcow2", "virtual-size": 16 * 2 ** 20, "cluster-size": 65536 })
    expect(result.lastProgress).toEqual({ bytesDone: 16 * 2 ** 20, bytesTotal: 16 * 2 ** 20 })
    expect(result.abort).toBe("AbortError")
    expect(result.notQcow2).toBe("NotQcow2")
    const twin = join(images, "promise-twin.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", twin, "16M")
    qemuIo("-f", "qcow2", "-c", "write -P 0xaa 1000 70000", "-c", "write -P 0xbb 1M 128k", "-c", "write -z 1052672 8192", "-c", "write -P 0xdd 2M 64k", "-c", "discard 2M 64k", "-c", "write -c -P 0xcc 4M 64k", twin)
    expect(qemuImgStatus("check", "-q", image)).toBe(0)
    expect(qemuImgStatus("compare", "-q", "-f", "qcow2", "-F", "qcow2", image, twin)).toBe(0)
    expect(qemuImgStatus("compare", "-q", "-f", "raw", "-F", "qcow2", join(images, "promise.raw"), twin)).toBe(0)
    expect(qemuImgStatus("check", "-q", join(images, "promise-c.qcow2"))).toBe(0)
    expect(qemuImgStatus("compare", "-q", "-f", "qcow2", "-F", "qcow2", join(images, "promise-c.qcow2"), twin)).toBe(0)
  })

  it("an Effect API script with its layers wired by hand writes an image that qemu-img checks and compares equal", () => {
    const result = runNode("effect-api.mjs")
    expect(result.readBack).toBe(true)
    expect(result.check).toMatchObject({ checkErrors: 0, corruptions: 0, leaks: 0 })
    const image = join(images, "effect.qcow2")
    const twin = join(images, "effect-twin.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", twin, "8M")
    qemuIo("-f", "qcow2", "-c", "write -P 0x5a 3M 256k", "-c", "write -z 3153920 4096", twin)
    expect(qemuImgStatus("check", "-q", image)).toBe(0)
    expect(qemuImgStatus("compare", "-q", "-s", "-f", "qcow2", "-F", "qcow2", image, twin)).toBe(0)
  })

  it("a strict TypeScript consumer type-checks against the published .d.ts files", () => {
    const tsc = createRequire(join(workspaceRoot, "package.json")).resolve("typescript/bin/tsc")
    const run = spawnSync(process.execPath, [tsc, "-p", join(project, "tsconfig.json")], { cwd: project, encoding: "utf8" })
    expect(run.stdout + run.stderr).toBe("")
    expect(run.status).toBe(0)
  })

  it("a browser bundle of @qcow2/format pulls in no other package, and decodes a header qemu-img wrote", async () => {
    const bundle = async (contents: string) => {
      const result = await build({
        stdin: { contents, resolveDir: project, sourcefile: "entry.js" },
        absWorkingDir: project,
        bundle: true,
        platform: "browser",
        format: "esm",
        minify: true,
        metafile: true,
        write: false,
        logLevel: "silent"
      })
      const inputs = Object.keys(result.metafile.inputs)
      expect(inputs.filter((input) => !["entry.js", "browser-format.js"].includes(input) && !input.startsWith("node_modules/@qcow2/format/"))).toEqual([])
      return result.outputFiles[0]!.contents
    }
    const consumer = await bundle(`export * from "./browser-format.js"`)
    const whole = await bundle(`export * from "@qcow2/format"`)
    console.log(`@qcow2/format browser bundle: consumer ${consumer.length} B (${gzipSync(consumer).length} B gzip), whole package ${whole.length} B (${gzipSync(whole).length} B gzip)`)

    const image = join(images, "header.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", image, "3G")
    const { describeImage } = (await import(`data:text/javascript;base64,${Buffer.from(consumer).toString("base64")}`)) as { describeImage: (bytes: Uint8Array) => unknown }
    const firstCluster = new Uint8Array(readFileSync(image).subarray(0, 65536))
    expect(describeImage(firstCluster)).toEqual({ version: 3, virtualSize: 3 * 2 ** 30, clusterSize: 65536, backingFile: null })
  })

  it("the CLI installs as the qcow2 bin: --version runs and info gives qemu-img's JSON", () => {
    const bin = join(project, "node_modules/.bin/qcow2")
    // Only `qcow2`: installing the CLI must not shadow QEMU's own qemu-img / qemu-io.
    expect(Object.keys(readManifest(installed("@qcow2/cli")).bin ?? {})).toEqual(["qcow2"])
    expect(existsSync(join(project, "node_modules/.bin/qemu-img"))).toBe(false)
    const version = spawnSync(bin, ["--version"], { encoding: "utf8" })
    expect(version.status).toBe(0)
    expect(version.stdout).toContain(readManifest(installed("@qcow2/cli")).version)
    const image = join(images, "cli.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", image, "1G")
    qemuIo("-f", "qcow2", "-c", "write -P 7 0 1M", image)
    const info = spawnSync(bin, ["info", "--output=json", image], { encoding: "utf8" })
    expect(info.status).toBe(0)
    expect(JSON.parse(info.stdout)).toEqual(JSON.parse(qemuImg("info", "--output=json", image)))
  })
})
