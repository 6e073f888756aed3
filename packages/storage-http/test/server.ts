/**
 * A small HTTP file server for tests (node:http on 127.0.0.1, random port)
 * with Range and ETag support and injectable misbehaviour.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"

/** One injected failure, consumed by the next GET or HEAD. */
export type Fault =
  | { readonly kind: "status"; readonly status: number; readonly retryAfter?: string }
  /** Close the connection before any response. */
  | { readonly kind: "reset" }
  /** Send the headers and half the body, then close the connection. */
  | { readonly kind: "resetBody" }
  /** Answer normally after `ms` milliseconds. */
  | { readonly kind: "delay"; readonly ms: number }
  /** Send the headers and half the body, then wait `ms` before the rest. */
  | { readonly kind: "stallBody"; readonly ms: number }

export interface LoggedRequest {
  readonly method: string
  readonly path: string
  readonly range: string | undefined
  readonly ifMatch: string | undefined
  readonly status: number
  readonly bodyBytes: number
}

interface File {
  data: Uint8Array
  etag: string
  lastModified: string
}

export class TestServer {
  private server: Server | undefined
  private readonly files = new Map<string, File>()
  private readonly sockets = new Set<Socket>()
  private version = 0
  readonly log: Array<LoggedRequest> = []
  /** Consumed in order by the next requests. */
  faults: Array<Fault> = []
  /** Answer Range requests with 200 and the whole file. */
  ignoreRange = false
  /** `Accept-Ranges` value, or undefined to leave it out. */
  acceptRanges: string | undefined = "bytes"
  /** Answer HEAD with this status instead (e.g. 405). */
  headStatus: number | undefined = undefined
  sendEtag = true
  sendLastModified = true
  /** Evaluate If-Match (RFC 9110 §13.1.1); off simulates a server that ignores it. */
  honourIfMatch = true
  /** Send Content-Range on 206 answers (off simulates CORS hiding it). */
  sendContentRange = true
  /** Delay of every response in milliseconds. */
  latencyMs = 0
  port = 0

  async start(): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res))
    server.on("connection", (socket) => {
      this.sockets.add(socket)
      socket.on("close", () => this.sockets.delete(socket))
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    this.port = (server.address() as AddressInfo).port
    this.server = server
  }

  async stop(): Promise<void> {
    const server = this.server
    if (server === undefined) return
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
    this.server = undefined
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`
  }

  /** Publishes (or replaces, with a new ETag and Last-Modified) a file. */
  put(path: string, data: Uint8Array): string {
    this.version++
    const date = new Date(Date.UTC(2026, 0, 1, 0, 0, this.version))
    this.files.set(path, { data, etag: `"v${this.version}-${data.length}"`, lastModified: date.toUTCString() })
    return this.url(path)
  }

  /** Requests to `path` (or all) with the given method. */
  requests(path?: string, method?: string): Array<LoggedRequest> {
    return this.log.filter((r) => (path === undefined || r.path === path) && (method === undefined || r.method === method))
  }

  reset(): void {
    this.log.length = 0
    this.faults = []
    this.ignoreRange = false
    this.acceptRanges = "bytes"
    this.headStatus = undefined
    this.sendEtag = true
    this.sendLastModified = true
    this.honourIfMatch = true
    this.sendContentRange = true
    this.latencyMs = 0
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const entry = {
      method: req.method ?? "",
      path: new URL(req.url ?? "/", "http://x").pathname,
      range: req.headers.range,
      ifMatch: req.headers["if-match"],
      status: 0,
      bodyBytes: 0
    }
    this.log.push(entry)
    const fault = this.faults.shift()
    const respond = () => this.respond(req, res, entry, fault)
    const delay = (fault?.kind === "delay" ? fault.ms : 0) + this.latencyMs
    if (delay > 0) setTimeout(respond, delay)
    else respond()
  }

  private respond(
    req: IncomingMessage,
    res: ServerResponse,
    entry: { status: number; bodyBytes: number; path: string; method: string },
    fault: Fault | undefined
  ): void {
    if (fault?.kind === "reset") {
      req.socket.destroy()
      return
    }
    if (fault?.kind === "status") {
      entry.status = fault.status
      if (fault.retryAfter !== undefined) res.setHeader("retry-after", fault.retryAfter)
      res.writeHead(fault.status, { "content-length": "0" }).end()
      return
    }
    if (entry.method === "HEAD" && this.headStatus !== undefined) {
      entry.status = this.headStatus
      res.writeHead(this.headStatus, { "content-length": "0" }).end()
      return
    }
    const file = this.files.get(entry.path)
    if (file === undefined) {
      entry.status = 404
      res.writeHead(404, { "content-length": "0" }).end()
      return
    }
    const size = file.data.length
    const headers: Record<string, string> = {}
    if (this.sendEtag) headers["etag"] = file.etag
    if (this.sendLastModified) headers["last-modified"] = file.lastModified
    if (this.acceptRanges !== undefined) headers["accept-ranges"] = this.acceptRanges
    const ifMatch = req.headers["if-match"]
    if (this.honourIfMatch && ifMatch !== undefined && ifMatch !== "*" && ifMatch !== file.etag) {
      entry.status = 412
      res.writeHead(412, { ...headers, "content-length": "0" }).end()
      return
    }
    let status = 200
    let start = 0
    let end = size
    const match = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "")
    if (match !== null && !this.ignoreRange) {
      const first = Number(match[1])
      const last = match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1)
      if (first >= size) {
        entry.status = 416
        res.writeHead(416, { ...headers, "content-range": `bytes */${size}`, "content-length": "0" }).end()
        return
      }
      status = 206
      start = first
      end = last + 1
      if (this.sendContentRange) headers["content-range"] = `bytes ${first}-${last}/${size}`
    }
    headers["content-length"] = String(end - start)
    headers["content-type"] = "application/octet-stream"
    entry.status = status
    res.writeHead(status, headers)
    if (entry.method === "HEAD") {
      res.end()
      return
    }
    const body = file.data.subarray(start, end)
    if (fault?.kind === "resetBody" || fault?.kind === "stallBody") {
      const half = body.subarray(0, Math.floor(body.length / 2))
      entry.bodyBytes = half.length
      res.write(half)
      if (fault.kind === "resetBody") {
        setTimeout(() => req.socket.destroy(), 20)
      } else {
        setTimeout(() => {
          if (!res.destroyed) res.end(body.subarray(half.length))
        }, fault.ms)
      }
      return
    }
    entry.bodyBytes = body.length
    res.end(body)
  }
}

/** Deterministic test content: byte i depends on i and a seed. */
export const pattern = (length: number, seed = 1): Uint8Array => {
  const out = new Uint8Array(length)
  let x = seed * 2654435761 >>> 0
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    out[i] = x >>> 24
  }
  return out
}
