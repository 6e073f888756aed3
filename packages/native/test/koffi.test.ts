/**
 * koffi loaded from its platform package's addon, and the fallback to
 * `require("koffi")` when the addon is missing or of another version.
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { koffi, loadKoffi } from "../src/index.js"

const made: Array<string> = []
afterAll(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

/** This package's koffi directory and its platform package (what the real layout holds). */
const realKoffi = path.dirname(createRequire(import.meta.url).resolve("koffi"))
const realPlatform = fs.realpathSync(path.join(realKoffi, "..", "@koromix", `koffi-${process.platform}-${process.arch}`))

/**
 * A node_modules with a koffi whose index.cjs exports a stand-in (so the
 * fallback is seen taken) and, when `platform` is given, a platform
 * package beside it; `version` is the stand-in koffi's package version.
 */
const layout = (version: string, platform: boolean, exported = "{ ...real, default: undefined, fallback: true }"): string => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-native-"))
  made.push(root)
  const dir = path.join(root, "node_modules", "koffi")
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "koffi", version, main: "./index.cjs" }))
  fs.writeFileSync(
    path.join(dir, "index.cjs"),
    `const real = require(${JSON.stringify(path.join(realKoffi, "index.cjs"))}); module.exports = ${exported}`
  )
  if (platform) {
    fs.mkdirSync(path.join(root, "node_modules", "@koromix"))
    fs.symlinkSync(realPlatform, path.join(root, "node_modules", "@koromix", `koffi-${process.platform}-${process.arch}`))
  }
  return path.join(root, "from.js")
}

const getpid = (k: ReturnType<typeof loadKoffi>): number | bigint | undefined => k?.load("libc.so.6").func("int getpid(void)")()

describe.runIf(process.platform === "linux" && (process.arch === "x64" || process.arch === "arm64"))("koffi", () => {
  it("is loaded once per process and calls into libc", () => {
    const k = koffi()
    expect(k).toBeDefined()
    expect(koffi()).toBe(k)
    expect(getpid(k)).toBe(process.pid)
  })

  it("comes from the platform package's addon, without koffi's loader, when the versions agree", () => {
    const version = (JSON.parse(fs.readFileSync(path.join(realKoffi, "package.json"), "utf8")) as { version: string }).version
    const k = loadKoffi(layout(version, true))
    expect(getpid(k)).toBe(process.pid)
    expect((k as unknown as { fallback?: boolean }).fallback).toBeUndefined()
  })

  it("falls back to require('koffi') when the addon is of another version", () => {
    const k = loadKoffi(layout("0.0.1", true))
    expect((k as unknown as { fallback?: boolean }).fallback).toBe(true)
    expect(getpid(k)).toBe(process.pid)
  })

  it("falls back to require('koffi') when there is no platform package beside it", () => {
    const k = loadKoffi(layout("3.3.4", false))
    expect((k as unknown as { fallback?: boolean }).fallback).toBe(true)
    expect(getpid(k)).toBe(process.pid)
  })

  it("is undefined when what require('koffi') gives lacks koffi's functions", () => {
    expect(loadKoffi(layout("3.3.4", false, "{ load: real.load }"))).toBeUndefined()
  })
})
