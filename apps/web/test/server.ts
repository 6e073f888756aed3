import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"

const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json", ".wasm": "application/wasm" }

/** A loopback static server with Range support (what an image host does), counting its requests. */
export interface StaticServer {
  readonly url: string
  readonly requests: string[]
  close(): Promise<void>
}

/** Serves the files of `roots` (first match wins) on 127.0.0.1 and a free port. */
export const serveStatic = (roots: ReadonlyArray<string>): Promise<StaticServer> => {
  const requests: string[] = []
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost")
    requests.push(`${req.method} ${url.pathname} ${req.headers.range ?? ""}`)
    const rel = decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname)
    const file = roots.map((r) => path.join(r, path.normalize(rel))).find((f) => fs.existsSync(f) && fs.statSync(f).isFile())
    if (file === undefined) {
      res.writeHead(404).end()
      return
    }
    const size = fs.statSync(file).size
    const headers = { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream", "Accept-Ranges": "bytes", "Access-Control-Allow-Origin": "*" }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "")
    if (range !== null) {
      const start = Number(range[1])
      const end = Math.min(size - 1, range[2] === "" ? size - 1 : Number(range[2]))
      if (start >= size) {
        res.writeHead(416, { ...headers, "Content-Range": `bytes */${size}` }).end()
        return
      }
      res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${size}`, "Content-Length": String(end - start + 1) })
      if (req.method === "HEAD") res.end()
      else fs.createReadStream(file, { start, end }).pipe(res)
      return
    }
    res.writeHead(200, { ...headers, "Content-Length": String(size) })
    if (req.method === "HEAD") res.end()
    else fs.createReadStream(file).pipe(res)
  })
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port
      resolve({
        url: `http://127.0.0.1:${port}`,
        requests,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          })
      })
    })
  )
}
