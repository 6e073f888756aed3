import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import { chromium, type Browser, type Page } from "playwright-core"
import { serveStatic, type StaticServer } from "./server.js"

/** The app's folder. */
export const APP = path.resolve(import.meta.dirname, "..")

/** Where the tests save screenshots of the screens they pass through (git-ignored). */
export const SCREENSHOTS = path.join(APP, "test-results", "screenshots")

/** Debian's Chromium, headless, with the flags of docs/TOOLCHAIN.md. */
const CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]

export interface AppFixture {
  /** The test's scratch folder: images made by qemu-img, served next to the app. */
  readonly dir: string
  /** Serves the built app and `dir`. */
  readonly app: StaticServer
  /** Serves `dir` from another origin (for the hostile-backing test). */
  readonly other: StaticServer
  readonly browser: Browser
  /** Runs a QEMU tool in `dir`, returning its standard output. */
  readonly qemu: (tool: string, ...args: string[]) => string
  /** A fresh browser context (its own IndexedDB) on the app's page. */
  readonly newPage: (query?: string) => Promise<Page>
  readonly shot: (page: Page, name: string) => Promise<void>
  readonly close: () => Promise<void>
}

/** Builds the app, starts the loopback servers and Chromium. */
export const setupApp = async (): Promise<AppFixture> => {
  execFileSync(process.execPath, [path.join(APP, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "error"], { cwd: APP })
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-web-"))
  fs.mkdirSync(SCREENSHOTS, { recursive: true })
  const other = await serveStatic([dir])
  const app = await serveStatic([path.join(APP, "dist"), dir])
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_FLAGS })
  return {
    dir,
    app,
    other,
    browser,
    qemu: (tool, ...args) => runQemu(tool, args, { cwd: dir }),
    newPage: async (query = "") => {
      const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1 })
      const page = await context.newPage()
      await page.goto(`${app.url}/index.html${query}`)
      return page
    },
    shot: async (page, name) => {
      await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) })
    },
    close: async () => {
      await browser.close()
      await app.close()
      await other.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** Parses the JSON a QEMU tool prints. */
export const qemuJson = (f: AppFixture, tool: string, ...args: string[]) => JSON.parse(f.qemu(tool, ...args))

/** Opens `url` from the URL form and waits until it is open. */
export const openUrl = async (page: Page, url: string): Promise<void> => {
  await page.fill("#url-input", url)
  await page.click("#url-form button")
  await page.waitForSelector("text=Open: ")
}

/** Runs one console line; its output. */
export const consoleRun = async (page: Page, line: string): Promise<string> => {
  const before = (await page.textContent("#console-output")) ?? ""
  await page.fill("#console-input", line)
  await page.click("#console-form button")
  await page.waitForFunction((n) => (document.getElementById("console-output")?.textContent ?? "").length > n, before.length)
  return ((await page.textContent("#console-output")) ?? "").slice(before.length)
}
