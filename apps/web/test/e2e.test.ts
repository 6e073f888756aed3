import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { chromium, type Browser, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { serveStatic, type StaticServer } from "./server.js"

/**
 * The web app in real Chromium (Debian's, never a downloaded browser): the
 * built app served from loopback with test images made by qemu-img, and
 * what the page shows, downloads and stores checked against qemu-img.
 */

const APP = path.resolve(import.meta.dirname, "..")
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-web-"))
const qemu = (tool: string, ...args: string[]) => execFileSync(tool, args, { cwd: dir, encoding: "utf8" })

let app: StaticServer
let other: StaticServer
let browser: Browser

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(APP, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "error"], { cwd: APP })
  qemu("qemu-img", "create", "-f", "qcow2", "base.qcow2", "4M")
  qemu("qemu-io", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 3M 64k", "base.qcow2")
  other = await serveStatic([dir])
  qemu("qemu-img", "create", "-f", "qcow2", "-u", "-b", `${other.url}/base.qcow2`, "-F", "qcow2", "hostile.qcow2", "4M")
  app = await serveStatic([path.join(APP, "dist"), dir])
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] })
})

afterAll(async () => {
  await browser?.close()
  await app?.close()
  await other?.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

const newPage = async (): Promise<Page> => {
  const context = await browser.newContext({ acceptDownloads: true })
  const page = await context.newPage()
  await page.goto(`${app.url}/index.html`)
  return page
}

const consoleRun = async (page: Page, line: string): Promise<string> => {
  const before = (await page.textContent("#console-output")) ?? ""
  await page.fill("#console-input", line)
  await page.click("#console-form button")
  await page.waitForFunction((n) => (document.getElementById("console-output")?.textContent ?? "").length > n, before.length)
  return ((await page.textContent("#console-output")) ?? "").slice(before.length)
}

describe("apps/web in Chromium", () => {
  it("opens an image over HTTP: info, request counters, cluster map, hex view, check", async () => {
    const page = await newPage()
    await page.fill("#url-input", `${app.url}/base.qcow2`)
    await page.click("#url-form button")
    await page.waitForSelector("text=Open: ")
    expect(await page.textContent('[data-field="virtual size"]')).toBe("4 MiB (4194304 bytes)")
    expect(await page.textContent('[data-field="format"]')).toBe("qcow2")
    expect(await page.textContent("#http-stats")).toMatch(/HTTP: \d+ requests, \d+ bytes fetched/)
    // 1 MiB + 64 KiB of data in 64 KiB clusters.
    expect(await page.textContent('[data-category="data"]')).toBe("data: 17")
    expect(await page.textContent('[data-category="unallocated"]')).toBe("unallocated: 47")
    await page.fill("#hex-offset", "3M")
    await page.click("#hex-form button")
    await page.waitForFunction(() => (document.getElementById("hex")?.textContent ?? "") !== "")
    expect(await page.textContent("#hex")).toContain("00300000:  42 42 42 42")
    await page.click("#check-button")
    await page.waitForFunction(() => (document.getElementById("check-result")?.textContent ?? "") !== "")
    expect(await page.textContent("#check-result")).toContain("No errors were found on the image.")
    await page.context().close()
  })

  it("keeps an overlay in IndexedDB over a remote base: writes survive a reload, and the download passes qemu-img check", async () => {
    const page = await newPage()
    await page.fill('#create-form [name="name"]', "vm/overlay.qcow2")
    await page.fill('#create-form [name="size"]', "")
    await page.fill('#create-form [name="backingFile"]', `${app.url}/base.qcow2`)
    await page.click("#create-form button")
    await page.waitForSelector("text=Open: idb://qcow2-web/vm/overlay.qcow2")
    expect(await consoleRun(page, "write -P 0x77 64k 128k")).toContain("wrote 131072/131072 bytes at offset 65536")
    expect(await consoleRun(page, "flush")).toBe("qemu-io> flush\n")
    await page.reload()
    await page.waitForSelector('[data-store="vm/overlay.qcow2"]')
    await page.click('[data-store="vm/overlay.qcow2"] [data-action="open"]')
    await page.waitForSelector("text=Open: idb://qcow2-web/vm/overlay.qcow2")
    expect(await consoleRun(page, "read -P 0x77 64k 128k")).toContain("read 131072/131072 bytes at offset 65536")
    expect(await consoleRun(page, "read -P 0x41 512k 4k")).toContain("read 4096/4096 bytes at offset 524288")
    expect(await page.textContent("#chain")).toContain(`backing 1: ${app.url}/base.qcow2 (qcow2)`)
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-button")])
    const saved = path.join(dir, "overlay.qcow2")
    await download.saveAs(saved)
    expect(JSON.parse(qemu("qemu-img", "info", "--output=json", "-U", saved))["backing-filename"]).toBe(`${app.url}/base.qcow2`)
    // The test's server shares this process, which blocks in execFileSync:
    // point the overlay at the same base as a local file before QEMU opens it.
    qemu("qemu-img", "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", saved)
    const check = JSON.parse(qemu("qemu-img", "check", "--output=json", saved))
    expect([check.corruptions ?? 0, check.leaks ?? 0]).toEqual([0, 0])
    qemu("qemu-io", "-c", "read -P 0x77 64k 128k", "-c", "read -P 0x41 512k 4k", saved)
    const expected = Buffer.alloc(4 << 20)
    expected.fill(0x41, 0, 1 << 20)
    expected.fill(0x77, 64 << 10, 192 << 10)
    expected.fill(0x42, 3 << 20, (3 << 20) + (64 << 10))
    qemu("qemu-img", "convert", "-O", "raw", saved, "overlay.raw")
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "overlay.raw")), expected)).toBe(0)
    await page.context().close()
  })

  it("does not follow a hostile image's backing file to another origin until the user approves it", async () => {
    const page = await newPage()
    const before = other.requests.length
    await page.fill("#url-input", `${app.url}/hostile.qcow2`)
    await page.click("#url-form button")
    await page.waitForSelector("#approve")
    expect(await page.textContent("#status")).toContain(`names ${other.url}/base.qcow2, which needs your approval`)
    expect(await page.textContent("#plan")).toContain("blocked")
    expect(other.requests.length).toBe(before)
    await page.click("#approve")
    await page.waitForSelector("text=Open: ")
    expect(other.requests.length).toBeGreaterThan(before)
    expect(await page.textContent("#chain")).toContain(`backing 1: ${other.url}/base.qcow2`)
    await page.context().close()
  })

  it("opens local files from the picker: an overlay finds its backing file among them, and only there", async () => {
    qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "local.qcow2")
    qemu("qemu-io", "-c", "write -P 0x55 2M 4k", "local.qcow2")
    const page = await newPage()
    await page.setInputFiles("#file-input", [path.join(dir, "local.qcow2"), path.join(dir, "base.qcow2")])
    await page.waitForSelector("text=Open: picked:local.qcow2")
    expect(await consoleRun(page, "read -P 0x55 2M 4k")).toContain("read 4096/4096 bytes at offset 2097152")
    expect(await consoleRun(page, "read -P 0x41 0 4k")).toContain("read 4096/4096 bytes at offset 0")
    // Picked files open read-only.
    expect(await consoleRun(page, "write 0 4k")).toContain("write failed")
    expect(await page.textContent('[data-category="backing"]')).toBe("backing: 17")
    await page.context().close()
  })
})
