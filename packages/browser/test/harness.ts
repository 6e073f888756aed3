/**
 * Runs test/page/entry.ts in Debian's Chromium (never a downloaded browser):
 * bundles it with esbuild as a browser would get it (the `browser` export
 * condition, `vitest` mapped to a small shim), serves it with a test
 * directory from a 127.0.0.1 server (IndexedDB needs an http origin), and
 * opens it with playwright-core.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { build } from "esbuild"
import { chromium, type Browser, type Page } from "playwright-core"

/** Headless flags of ../shared/docs/TOOLCHAIN.md. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync"
]

/** Bundles the page script into `dir` (with an index.html loading it); returns the script's size. */
export const bundlePage = async (dir: string): Promise<number> => {
  const result = await build({
    entryPoints: [path.join(import.meta.dirname, "page/entry.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    conditions: ["@qcow2/source", "browser"],
    alias: { vitest: path.join(import.meta.dirname, "page/vitest-shim.ts") },
    outfile: path.join(dir, "page.js"),
    metafile: true,
    logLevel: "silent"
  })
  const imported = Object.values(result.metafile.outputs).flatMap((o) => o.imports.map((i) => i.path))
  const nodeImports = imported.filter((p) => p.startsWith("node:"))
  if (nodeImports.length > 0) throw new Error(`the page bundle imports ${nodeImports.join(", ")}`)
  fs.writeFileSync(path.join(dir, "index.html"), `<!doctype html><meta charset="utf-8"><title>loading</title><script type="module" src="page.js"></script>`)
  return fs.statSync(path.join(dir, "page.js")).size
}

const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript" }

/** A loopback server for the files of `dir`, with Range requests (what an image host does). */
export interface PageServer {
  readonly url: string
  close(): Promise<void>
}

/** Lets pages of other origins read images (the cross-origin backing file a user approved). */
const CORS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "Range",
  "Access-Control-Expose-Headers": "Content-Range, Accept-Ranges, Content-Length"
}

export const servePage = (dir: string): Promise<PageServer> => {
  const server = http.createServer((req, res) => {
    if (req.method === "OPTIONS") {
      res.writeHead(204, CORS).end()
      return
    }
    const file = path.join(dir, path.normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)))
    if (!file.startsWith(dir) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end()
      return
    }
    const size = fs.statSync(file).size
    const headers = { ...CORS, "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream", "Accept-Ranges": "bytes" }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "")
    if (range === null) {
      res.writeHead(200, { ...headers, "Content-Length": String(size) })
      if (req.method === "HEAD") res.end()
      else fs.createReadStream(file).pipe(res)
      return
    }
    const start = Number(range[1])
    const end = Math.min(size - 1, range[2] === "" ? size - 1 : Number(range[2]))
    if (start >= size) {
      res.writeHead(416, { ...headers, "Content-Range": `bytes */${size}` }).end()
      return
    }
    res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${size}`, "Content-Length": String(end - start + 1) })
    if (req.method === "HEAD") res.end()
    else fs.createReadStream(file, { start, end }).pipe(res)
  })
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          })
      })
    })
  )
}

/** Chromium with the page loaded and ready (`window.qcow2Test` set). */
export const openPage = async (url: string): Promise<{ readonly browser: Browser; readonly page: Page }> => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS })
  const page = await browser.newPage()
  const errors: Array<string> = []
  page.on("pageerror", (e) => errors.push(e.message))
  await page.goto(`${url}/index.html`)
  await page.waitForFunction(() => document.title === "ready", undefined, { timeout: 60_000 }).catch((e) => {
    throw new Error(`the test page did not start: ${errors.join("; ") || String(e)}`)
  })
  return { browser, page }
}
