/**
 * Images opened by http:// URL through the Promise API, served by a
 * loopback node:http server the test starts (Range requests, ETags), and
 * by https:// through a TLS front to that server with a certificate
 * openssl makes at test time.
 */
import { execFile, execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { createConnection, type AddressInfo } from "node:net"
import { resolve } from "node:path"
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { TestServer } from "../../storage-http/test/server.js"
import { convert, open, ImageError } from "../src/index.js"
import { qemuCompare, qemuImg, qemuIo, qemuRaw, sameBytes, tempDir } from "./helpers.js"

describe("open over HTTP", () => {
  const tmp = tempDir()
  const server = new TestServer()
  let baseUrl = ""
  let topUrl = ""

  beforeAll(async () => {
    await server.start()
    qemuImg("create", "-q", "-f", "qcow2", tmp.path("base.qcow2"), "4M")
    qemuIo("-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "write -c -P 0x62 2M 64k", tmp.path("base.qcow2"))
    // A relative backing name resolves against the URL of the image that names it.
    qemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", tmp.path("top.qcow2"))
    qemuIo("-f", "qcow2", "-c", "write -P 0x63 512k 128k", tmp.path("top.qcow2"))
    baseUrl = server.put("/images/base.qcow2", new Uint8Array(readFileSync(tmp.path("base.qcow2"))))
    topUrl = server.put("/images/top.qcow2", new Uint8Array(readFileSync(tmp.path("top.qcow2"))))
  })
  afterAll(async () => {
    await server.stop()
    tmp.cleanup()
  })

  it("reads a qcow2 image and its backing file by URL as qemu-img convert does", async () => {
    const expected = qemuRaw(tmp.path("top.qcow2"), tmp.path("top.raw"))
    await using img = await open(topUrl)
    expect(img.readOnly).toBe(true)
    expect(img.location).toBe(topUrl)
    expect(sameBytes(await img.read(0, img.virtualSize), expected)).toBe(true)
    const chain = await img.info({ backingChain: true })
    expect(chain.map((i) => i.filename)).toEqual([topUrl, baseUrl])
    expect(chain[0]!["backing-filename"]).toBe("base.qcow2")
    expect(server.requests("/images/base.qcow2", "GET").length).toBeGreaterThan(0)
  })

  it("refuses writes with reason ReadOnly", async () => {
    await using img = await open(baseUrl)
    const e = await img.write(0, new Uint8Array(512)).catch((x: unknown) => x)
    expect(e).toBeInstanceOf(ImageError)
    expect(e).toMatchObject({ _tag: "ImageError", reason: "ReadOnly" })
  })

  it("converts a URL into a local qcow2 image", async () => {
    const out = tmp.path("from-http.qcow2")
    await convert(topUrl, out, { outFormat: "qcow2" })
    expect(qemuCompare("-F", "qcow2", out, tmp.path("top.qcow2"))).toBe(0)
  })

  it("a URL that is not there rejects with reason Storage", async () => {
    await expect(open(server.url("/images/missing.qcow2"))).rejects.toMatchObject({ _tag: "ImageError", reason: "Storage" })
  })
})

describe("open over HTTPS", () => {
  const tmp = tempDir()
  const server = new TestServer()
  let tls: TlsServer | undefined
  let url = ""

  beforeAll(async () => {
    await server.start()
    qemuImg("create", "-q", "-f", "qcow2", tmp.path("img.qcow2"), "2M")
    qemuIo("-f", "qcow2", "-c", "write -P 0x71 64k 300k", tmp.path("img.qcow2"))
    const path = new URL(server.put("/img.qcow2", new Uint8Array(readFileSync(tmp.path("img.qcow2"))))).pathname
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
      "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", tmp.path("key.pem"), "-out", tmp.path("cert.pem")], { stdio: "ignore" })
    // TLS in front of the plain test server: each connection is piped to it.
    const front = createTlsServer({ key: readFileSync(tmp.path("key.pem")), cert: readFileSync(tmp.path("cert.pem")) }, (socket) => {
      const upstream = createConnection(server.port, "127.0.0.1")
      socket.pipe(upstream).pipe(socket)
      const destroy = () => (socket.destroy(), upstream.destroy())
      socket.on("error", destroy)
      upstream.on("error", destroy)
    })
    await new Promise<void>((done) => front.listen(0, "127.0.0.1", done))
    tls = front
    url = `https://127.0.0.1:${(front.address() as AddressInfo).port}${path}`
  })
  afterAll(async () => {
    await new Promise((done) => (tls !== undefined ? tls.close(done) : done(undefined)))
    await server.stop()
    tmp.cleanup()
  })

  it("reads and converts an https:// image in a process that trusts the certificate", async () => {
    const dist = resolve(import.meta.dirname, "../dist/index.js")
    const script = `
      import { convert, open } from ${JSON.stringify(dist)}
      const img = await open(process.argv[1])
      const info = await img.info()
      await img.close()
      await convert(process.argv[1], process.argv[2])
      console.log(info.format, info["virtual-size"])`
    // Asynchronously: the servers run in this process.
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script, url, tmp.path("img.raw")], {
      encoding: "utf8",
      env: { ...process.env, NODE_EXTRA_CA_CERTS: tmp.path("cert.pem") }
    })
    expect(stdout).toBe("qcow2 2097152\n")
    expect(qemuCompare("-f", "raw", "-F", "qcow2", tmp.path("img.raw"), tmp.path("img.qcow2"))).toBe(0)
  })

  it("an untrusted certificate rejects the open with reason Storage", async () => {
    await expect(open(url)).rejects.toMatchObject({ _tag: "ImageError", reason: "Storage" })
  })
})
