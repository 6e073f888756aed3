import { spawnSync } from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import * as zlib from "node:zlib"
import type { Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { APP, consoleRun, openUrl, setupApp, type AppFixture } from "./fixture.js"

/**
 * Figures for the note, measured in Chromium against qemu-img in the same
 * run (FIGURES=1 pnpm -F @qcow2/web test -- test/figures.test.ts): export
 * throughput of a 256 MiB image, HTTP traffic to open a remote image and
 * read its first MiB, and the bundle size. Every export is also checked
 * with qemu-img. Results go to test-results/figures.json.
 */

const SIZE = 256 << 20
let f: AppFixture
const figures: Record<string, unknown> = {}

/** Wall and CPU (user + sys) seconds of a qemu-img run. */
const timeQemu = (...args: string[]) => {
  const run = spawnSync("/usr/bin/time", ["-f", "%e %U %S", "qemu-img", ...args], { cwd: f.dir, encoding: "utf8" })
  expect(run.status).toBe(0)
  const [wall, user, sys] = run.stderr.trim().split(/\s+/).slice(-3).map(Number)
  return { wall: wall!, cpu: user! + sys! }
}

/** Runs one export of the open image, waiting for its download; the page's own timing (seconds). */
const exportOnce = async (page: Page, format: string, compression: string, file: string, shot?: string): Promise<number> => {
  await page.click('[data-tab="export"]')
  await page.selectOption('#export-form [name="format"]', format)
  await page.selectOption('#export-form [name="compression"]', compression)
  await page.selectOption("#export-via", "download")
  await page.fill("#export-name", file)
  const download = page.waitForEvent("download", { timeout: 600_000 })
  await page.click("#export-button")
  if (shot !== undefined) {
    await page.waitForFunction(() => {
      const bar = document.getElementById("export-progress") as HTMLProgressElement
      return bar.value > 0.15 * bar.max && bar.value < bar.max
    }, undefined, { timeout: 600_000 })
    await f.shot(page, shot)
  }
  await (await download).saveAs(path.join(f.dir, file))
  const text = (await page.textContent("#export-status")) ?? ""
  return Number(/ in ([\d.]+) s/.exec(text)![1])
}

describe.skipIf(process.env.FIGURES !== "1")("figures", () => {
  beforeAll(async () => {
    f = await setupApp()
    // Half incompressible, half text-like (compresses ~5x), every cluster allocated.
    const raw = fs.openSync(path.join(f.dir, "source.raw"), "w")
    const piece = Buffer.alloc(1 << 20)
    const text = Buffer.from("qcow2 toolkit figures: a line of compressible log text, 0123456789 abcdefghij\n")
    for (let mib = 0; mib < SIZE >> 20; mib++) {
      if (mib % 2 === 0) crypto.randomFillSync(piece)
      else for (let i = 0; i < piece.length; i += text.length) text.copy(piece, i, 0, Math.min(text.length, piece.length - i))
      fs.writeSync(raw, piece)
    }
    fs.closeSync(raw)
    f.qemu("qemu-img", "convert", "-O", "qcow2", "source.raw", "big.qcow2")
  }, 300_000)

  afterAll(async () => {
    fs.writeFileSync(path.join(APP, "test-results", "figures.json"), JSON.stringify(figures, null, 2))
    await f?.close()
  })

  it("export throughput of a 256 MiB image, against qemu-img convert", async () => {
    const page = await f.newPage()
    await page.setInputFiles("#file-input", [path.join(f.dir, "big.qcow2")])
    await page.waitForSelector("text=Open: picked:big.qcow2")
    const runs = [
      { name: "raw", format: "raw", compression: "none", qemu: ["convert", "-O", "raw", "big.qcow2", "q.raw"] },
      { name: "qcow2", format: "qcow2", compression: "none", qemu: ["convert", "-O", "qcow2", "big.qcow2", "q.qcow2"] },
      { name: "qcow2 zlib", format: "qcow2", compression: "zlib", qemu: ["convert", "-c", "-O", "qcow2", "big.qcow2", "qz.qcow2"] },
      { name: "qcow2 zstd", format: "qcow2", compression: "zstd", qemu: ["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "big.qcow2", "qs.qcow2"] }
    ]
    for (const run of runs) {
      const file = `out-${run.name.replace(" ", "-")}.${run.format}`
      const seconds = await exportOnce(page, run.format, run.compression, file, run.compression === "zlib" ? "06-export-progress" : undefined)
      if (run.format === "qcow2") expect(JSON.parse(f.qemu("qemu-img", "check", "--output=json", file))["check-errors"]).toBe(0)
      f.qemu("qemu-img", "compare", "-F", "raw", file, "source.raw")
      const qemu = timeQemu(...run.qemu)
      figures[`export ${run.name}`] = {
        browserSeconds: seconds,
        browserMBps: +(SIZE / 1e6 / seconds).toFixed(1),
        qemuImgWallSeconds: qemu.wall,
        qemuImgCpuSeconds: +qemu.cpu.toFixed(2),
        ratioToQemuImg: +(seconds / Math.max(0.01, qemu.wall)).toFixed(1),
        fileBytes: fs.statSync(path.join(f.dir, file)).size
      }
      fs.rmSync(path.join(f.dir, file))
    }
    await page.context().close()
  }, 1_200_000)

  it("HTTP requests and bytes to open a remote image and read its first MiB", async () => {
    const page = await f.newPage()
    const before = f.app.requests.length
    await openUrl(page, `${f.app.url}/big.qcow2`)
    const opened = (await page.textContent("#http-stats")) ?? ""
    const openRequests = f.app.requests.length - before
    await page.click('[data-tab="console"]')
    expect(await consoleRun(page, "read 0 1M")).toContain("read 1048576/1048576 bytes at offset 0")
    figures["http open"] = { page: opened, serverRequests: openRequests }
    figures["http open + read first MiB"] = { page: await page.textContent("#http-stats"), serverRequests: f.app.requests.length - before }
    await page.context().close()
  })

  it("bundle size", () => {
    const assets = path.join(APP, "dist", "assets")
    const files = fs.readdirSync(assets).filter((n) => !n.endsWith(".map"))
    figures.bundle = Object.fromEntries(
      files.map((n) => {
        const bytes = fs.readFileSync(path.join(assets, n))
        return [n.replace(/-[\w-]+\./, "."), { bytes: bytes.length, gzipBytes: zlib.gzipSync(bytes, { level: 9 }).length }]
      })
    )
  })
})
