/**
 * http(s):// names: the CLI reads images and their backing chains over
 * HTTP Range requests. Served here by a small in-process server; results
 * are compared with qemu-img on the same files read locally.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2Async, qemu, sameRawFiles } from "./helpers.js"

let dir = ""
let server: http.Server
let base = ""
let requests = 0

/** Serves `dir` read-only with HEAD, Range (206) and ETag. */
const serve = (root: string): http.Server =>
  http.createServer((req, res) => {
    requests++
    const file = path.join(root, decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname))
    let stat: fs.Stats
    try {
      stat = fs.statSync(file)
    } catch {
      res.writeHead(404).end()
      return
    }
    const etag = `"${stat.size}-${stat.mtimeMs}"`
    const headers = { "Accept-Ranges": "bytes", ETag: etag, "Content-Type": "application/octet-stream" }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "")
    if (range === null) {
      res.writeHead(200, { ...headers, "Content-Length": stat.size })
      if (req.method === "HEAD") res.end()
      else fs.createReadStream(file).pipe(res)
      return
    }
    const start = Number(range[1])
    const end = Math.min(range[2] === "" ? stat.size - 1 : Number(range[2]), stat.size - 1)
    if (start >= stat.size) {
      res.writeHead(416, { "Content-Range": `bytes */${stat.size}` }).end()
      return
    }
    res.writeHead(206, { ...headers, "Content-Length": end - start + 1, "Content-Range": `bytes ${start}-${end}/${stat.size}` })
    if (req.method === "HEAD") res.end()
    else fs.createReadStream(file, { start, end }).pipe(res)
  })

beforeAll(async () => {
  buildBundle()
  dir = makeTempDir("qcow2-http-")
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 1 0 4M", "base.qcow2"])
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "compression_type=zstd", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"])
  qemu(dir, "qemu-io", ["-c", "write -P 2 1M 64k", "-c", "write -z 2M 64k", "-c", "write -c 3M 64k", "top.qcow2"])
  server = serve(dir)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}, 120_000)

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

describe("images over HTTP", () => {
  it("convert -O raw of a chain over HTTP equals qemu-img's local convert", async () => {
    qemu(dir, "qemu-img", ["convert", "-O", "raw", "top.qcow2", "local.raw"])
    const before = requests
    const r = await qcow2Async(dir, ["convert", "-O", "raw", `${base}/top.qcow2`, "remote.raw"])
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    expect(requests).toBeGreaterThan(before)
    const cmp = sameRawFiles(dir, "local.raw", "remote.raw")
    expect(cmp.same, cmp.detail).toBe(true)
  })
  it("info --backing-chain over HTTP matches qemu-img except names and disk usage", async () => {
    const expected = JSON.parse(qemu(dir, "qemu-img", ["info", "--output=json", "--backing-chain", "top.qcow2"]).stdout) as Array<Record<string, unknown>>
    const r = await qcow2Async(dir, ["info", "--output=json", "--backing-chain", `${base}/top.qcow2`])
    expect(r.status).toBe(0)
    const got = JSON.parse(r.stdout) as Array<Record<string, unknown>>
    expect(got.map((i) => i["filename"])).toEqual([`${base}/top.qcow2`, `${base}/base.qcow2`])
    expect(got[0]!["full-backing-filename"]).toBe(`${base}/base.qcow2`)
    const strip = (i: Record<string, unknown>) => {
      const { filename: _f, "full-backing-filename": _b, "actual-size": _a, ...rest } = i
      return rest
    }
    expect(got.map(strip)).toEqual(expected.map(strip))
  })
  it("map --output=json over HTTP equals qemu-img's local map", async () => {
    const expected = qemu(dir, "qemu-img", ["map", "--output=json", "top.qcow2"])
    const r = await qcow2Async(dir, ["map", "--output=json", `${base}/top.qcow2`])
    expect(r.status).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual(JSON.parse(expected.stdout))
  })
  it("refuses to write over HTTP with a clear message", async () => {
    const r = await qcow2Async(dir, ["io", "-c", "write 0 512", `${base}/top.qcow2`])
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/^qcow2: /)
    expect(r.stderr).not.toMatch(/\n\s+at /)
  })
  it("reports a missing URL like a missing file", async () => {
    const r = await qcow2Async(dir, ["info", `${base}/nope.qcow2`])
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/^qcow2: Could not open 'http:\/\/127\.0\.0\.1:\d+\/nope\.qcow2'/)
  })
})
