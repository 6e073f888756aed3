/**
 * Images opened by http:// URL through the Promise API, served by a
 * loopback node:http server the test starts (Range requests, ETags).
 */
import { readFileSync } from "node:fs"
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
