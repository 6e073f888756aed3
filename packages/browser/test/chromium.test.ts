/**
 * @qcow2/browser, the storage backends and the Web Worker compression pool
 * in real Chromium (Debian's), with qemu-img as the oracle: the shared
 * BlockStorage conformance suite against IndexedDB and Blob stores, pool
 * output that decodes to its input, and images converted or compressed in
 * the page that pass `qemu-img check` and `compare`.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import type { Browser, Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { bundlePage, openPage, servePage, type PageServer } from "./harness.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-browser-"))
const qemu = (tool: string, ...args: string[]) => runQemu(tool, args, { cwd: dir })
/** Exit code of a qemu-img command (0 = clean / identical). */
const qemuStatus = (...args: string[]): number => {
  try {
    execFileSync("qemu-img", args, { cwd: dir, stdio: "pipe" })
    return 0
  } catch (e) {
    return (e as { status: number }).status
  }
}

let server: PageServer
let browser: Browser
let page: Page

beforeAll(async () => {
  await bundlePage(dir)
  qemu("qemu-img", "create", "-f", "qcow2", "base.qcow2", "4M")
  qemu("qemu-io", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 3M 64k", "-c", "write -z 2M 64k", "base.qcow2")
  server = await servePage(dir)
  qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
  qemu("qemu-io", "-c", "write -P 0x43 512k 4k", "top.qcow2")
  qemu("qemu-img", "create", "-f", "qcow2", "--object", "secret,id=s0,data=hunter2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", "luks.qcow2", "1M")
  qemu("qemu-io", "--object", "secret,id=s0,data=hunter2", "--image-opts", "-c", "write -P 0x66 64k 64k", "driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=s0")
  // Names its backing file on another origin (localhost is not 127.0.0.1).
  qemu("qemu-img", "create", "-f", "qcow2", "-u", "-b", `${server.url.replace("127.0.0.1", "localhost")}/base.qcow2`, "-F", "qcow2", "hostile.qcow2", "4M")
  ;({ browser, page } = await openPage(server.url))
})

afterAll(async () => {
  await browser?.close()
  await server?.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

/** Writes what the page returned (base64) into the test directory. */
const saveBase64 = (name: string, base64: string): string => {
  fs.writeFileSync(path.join(dir, name), Buffer.from(base64, "base64"))
  return name
}

describe("in Chromium", () => {
  it("IndexedDB and Blob stores pass the shared BlockStorage conformance suite", async () => {
    const outcomes = await page.evaluate(() => window.qcow2Test.conformance())
    expect(outcomes.filter((o) => !o.ok)).toEqual([])
    expect(outcomes.filter((o) => o.name.includes("IndexedDB")).length).toBeGreaterThan(30)
    expect(outcomes.filter((o) => o.name.includes("Blob")).length).toBeGreaterThan(5)
  })

  it("the Web Worker pool gives the portable codec's bytes, which decode to the input", async () => {
    const report = await page.evaluate(() => window.qcow2Test.poolRoundTrip())
    expect(report.runtime).toBe("browser")
    expect(report.mismatches).toEqual([])
    expect(report.clusters).toBe(2 * (3 * 8 + 2))
    expect(report.compressed).toBeGreaterThan(30)
  })

  for (const compressionType of ["zlib", "zstd"] as const) {
    it(`an image opened by URL and exported compressed (${compressionType}, Web Workers) passes qemu-img check and compare`, async () => {
      const base64 = await page.evaluate(
        async ({ url, compressionType }) => {
          const t = window.qcow2Test
          const sink = t.collector()
          const phases = new Set<string>()
          await t.api.convert(url, sink.stream, { outFormat: "qcow2", compress: true, targetOptions: { compressionType }, onProgress: (p) => void phases.add(p.phase) })
          if (!phases.has("convert") || !phases.has("write")) throw new Error(`progress phases: ${[...phases].join(",")}`)
          return t.toBase64(sink.bytes())
        },
        { url: `${server.url}/base.qcow2`, compressionType }
      )
      const name = saveBase64(`export-${compressionType}.qcow2`, base64)
      const info = JSON.parse(qemu("qemu-img", "info", "--output=json", name))
      expect(info["format-specific"].data["compression-type"]).toBe(compressionType)
      expect(qemuStatus("check", name)).toBe(0)
      expect(qemuStatus("compare", "base.qcow2", name)).toBe(0)
      // Every data cluster (1 MiB + 64 KiB in 64 KiB clusters) is stored compressed.
      const check = JSON.parse(qemu("qemu-img", "check", "--output=json", name))
      expect([check["allocated-clusters"], check["compressed-clusters"]]).toEqual([17, 17])
    })
  }

  it("an export aborted through its signal rejects with AbortError, aborts the stream and leaves no scratch store", async () => {
    const got = await page.evaluate(async (url) => {
      const { api } = window.qcow2Test
      const controller = new AbortController()
      let aborted = "no"
      const stream = new WritableStream<Uint8Array>({ abort: (reason) => void (aborted = `yes: ${reason?.name}`) })
      const error = await api
        .convert(url, stream, { outFormat: "qcow2", compress: true, parallel: 1, scratchDatabase: "abort-scratch", onProgress: () => controller.abort(), signal: controller.signal })
        .then(
          () => "resolved",
          (e: Error) => `${e.name}: ${e instanceof api.AbortError}`
        )
      return { error, aborted, left: (await api.listImages("abort-scratch")).length }
    }, `${server.url}/base.qcow2`)
    expect(got).toEqual({ error: "AbortError: true", aborted: "yes: AbortError", left: 0 })
  })

  it("info and map of an image opened by URL are qemu-img's", async () => {
    const got = await page.evaluate(async (url) => {
      const img = await window.qcow2Test.api.open(url)
      try {
        return { info: await img.info(), map: await img.map(), readOnly: img.readOnly }
      } finally {
        await img.close()
      }
    }, `${server.url}/base.qcow2`)
    const expected = JSON.parse(qemu("qemu-img", "info", "--output=json", "base.qcow2"))
    expect(got.readOnly).toBe(true)
    expect({ ...got.info, filename: "", "actual-size": 0 }).toEqual({ ...expected, filename: "", "actual-size": 0 })
    const expectedMap = (JSON.parse(qemu("qemu-img", "map", "--output=json", "base.qcow2")) as Array<Record<string, unknown>>).map(({ filename: _, ...e }) => e)
    expect(got.map).toEqual(expectedMap)
  })

  it("an IndexedDB overlay over a URL keeps its writes, reopens only with the base allowed, and exports as raw", async () => {
    const url = `${server.url}/base.qcow2`
    const result = await page.evaluate(async (url) => {
      const { api, collector, toBase64 } = window.qcow2Test
      const name = "idb://vm/overlay.qcow2"
      await api.create(name, { backingFile: url, backingFormat: "qcow2" })
      const img = await api.open(name, { allow: [url] })
      await img.write(1536 * 1024, new Uint8Array(65536).fill(0x55))
      await img.writeZeroes(0, 4096)
      await img.close()
      // Without the user's approval the overlay may not reach another origin.
      const refused = await api.open(name).then(
        (i) => i.close().then(() => "opened"),
        (e: InstanceType<typeof api.ImageError>) => `${e instanceof api.ImageError ? e.name : "?"} ${e.reason}`
      )
      const sink = collector()
      await api.convert(name, sink.stream, { allow: [url] })
      const listed = (await api.listImages("vm")).map((s) => s.location)
      await api.deleteImage(name)
      return { refused, raw: toBase64(sink.bytes()), listed }
    }, url)
    expect(result.refused).toBe("ImageError BackingChain")
    expect(result.listed).toEqual(["idb://vm/overlay.qcow2"])
    qemu("qemu-img", "convert", "-O", "raw", "base.qcow2", "expected.raw")
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x55 1536k 64k", "-c", "write -z 0 4k", "expected.raw")
    const name = saveBase64("overlay.raw", result.raw)
    expect(qemuStatus("compare", "-f", "raw", "-F", "raw", "expected.raw", name)).toBe(0)
  })

  it("a hostile image cannot reach another origin or another database unless the caller allows it", async () => {
    const hostile = `${server.url}/hostile.qcow2`
    const other = `${server.url.replace("127.0.0.1", "localhost")}/base.qcow2`
    const got = await page.evaluate(
      async ({ hostile, other, base }) => {
        const { api } = window.qcow2Test
        const outcome = (p: Promise<{ close(): Promise<void> }>) =>
          p.then(
            (img) => img.close().then(() => "opened"),
            (e: Error & { reason?: string }) => `${e.name} ${e.reason}: ${e.message}`
          )
        // Another database: created with its base approved, reopened without.
        await api.create("idb://a/base.qcow2", { size: 1 << 20 })
        await api.create("idb://b/top.qcow2", { backingFile: "idb://a/base.qcow2", backingFormat: "qcow2" })
        const result = {
          otherOrigin: await outcome(api.open(hostile)),
          otherOriginAllowed: await outcome(api.open(hostile, { allow: [other] })),
          otherDatabase: await outcome(api.open("idb://b/top.qcow2")),
          otherDatabaseAllowed: await outcome(api.open("idb://b/top.qcow2", { allow: ["idb://a/base.qcow2"] })),
          sameOrigin: await outcome(api.open(base))
        }
        await api.deleteImage("idb://a/base.qcow2")
        await api.deleteImage("idb://b/top.qcow2")
        return result
      },
      { hostile, other, base: `${server.url}/base.qcow2` }
    )
    expect(got.otherOrigin).toMatch(/^ImageError BackingChain: .*blocked by the opening policy/)
    expect(got.otherOriginAllowed).toBe("opened")
    expect(got.otherDatabase).toMatch(/^ImageError BackingChain: .*idb:\/\/a\/base\.qcow2.*blocked by the opening policy/)
    expect(got.otherDatabaseAllowed).toBe("opened")
    expect(got.sameOrigin).toBe("opened")
  })

  it("picked files: an overlay finds its backing file among them; an encrypted image needs its passphrase", async () => {
    const got = await page.evaluate(async (url) => {
      const { api } = window.qcow2Test
      const file = async (name: string) => new File([await (await fetch(`${url}/${name}`)).blob()], name)
      const [top, base, luks] = [await file("top.qcow2"), await file("base.qcow2"), await file("luks.qcow2")]
      const img = await api.open(top, { files: [base] })
      const read = async (i: { read(o: number, l: number): Promise<Uint8Array> }, offset: number) => [...(await i.read(offset, 2))]
      const overlay = { own: await read(img, 512 * 1024), backing: await read(img, 3 * 1024 * 1024) }
      await img.close()
      const alone = await api.open(top).then(
        (i) => i.close().then(() => "opened"),
        (e: Error & { reason?: string }) => `${e.name} ${e.reason}`
      )
      const wrong = await api.open(luks, { passphrase: "nope" }).then(
        (i) => i.close().then(() => "opened"),
        (e: Error) => `${e.name} ${e instanceof api.WrongPassphraseError}`
      )
      const encrypted = await api.open(luks, { passphrase: "hunter2" })
      const decrypted = await read(encrypted, 64 * 1024)
      await encrypted.close()
      return { overlay, alone, wrong, decrypted }
    }, server.url)
    expect(got).toEqual({
      overlay: { own: [0x43, 0x43], backing: [0x42, 0x42] },
      alone: "ImageError BackingChain",
      wrong: "WrongPassphraseError true",
      decrypted: [0x66, 0x66]
    })
  })

  it("a picked file (Blob) opens read-only with its data", async () => {
    const got = await page.evaluate(async (url) => {
      const { api } = window.qcow2Test
      const file = new File([await (await fetch(url)).blob()], "base.qcow2")
      const img = await api.open(file)
      try {
        const bytes = await img.read(3 * 1024 * 1024, 4)
        const write = await img.write(0, new Uint8Array(512)).then(
          () => "written",
          (e: InstanceType<typeof api.ImageError>) => e.reason
        )
        return { location: img.location, readOnly: img.readOnly, bytes: [...bytes], write }
      } finally {
        await img.close()
      }
    }, `${server.url}/base.qcow2`)
    expect(got).toEqual({ location: "picked:base.qcow2", readOnly: true, bytes: [0x42, 0x42, 0x42, 0x42], write: "ReadOnly" })
  })
})
