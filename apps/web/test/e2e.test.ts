import * as fs from "node:fs"
import * as path from "node:path"
import { runQemuAsync } from "@qcow2/qemu-oracle"
import type { Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { consoleRun, openUrl, qemuJson, setupApp, type AppFixture } from "./fixture.js"

/**
 * The web app in real Chromium (Debian's, never a downloaded browser): the
 * built app served from loopback with test images made by qemu-img, and
 * what the page shows, downloads and stores checked against qemu-img. Each
 * test saves screenshots of the screens it passes through.
 */

let f: AppFixture
/** The encrypted test image: qemu-img spends ~20 s timing PBKDF2 here, so it is made while the other tests run. */
let encrypted: Promise<unknown>

beforeAll(async () => {
  f = await setupApp()
  encrypted = runQemuAsync(
    "qemu-img",
    ["create", "-f", "qcow2", "--object", "secret,id=s0,data=hunter2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", "secret.qcow2", "1M"],
    { cwd: f.dir }
  )
  // Handled here too: a failure is reported by the test that awaits it, not as an unhandled rejection.
  encrypted.catch(() => undefined)
  f.qemu("qemu-img", "create", "-f", "qcow2", "base.qcow2", "4M")
  f.qemu("qemu-io", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 3M 64k", "base.qcow2")
  f.qemu("qemu-img", "create", "-f", "qcow2", "-u", "-b", `${f.other.url}/base.qcow2`, "-F", "qcow2", "hostile.qcow2", "4M")
})

afterAll(() => f?.close())

/** qemu-img's ImageInfo without what only the local file has (its name, its allocated bytes). */
const comparableInfo = (info: Record<string, unknown>) => {
  const { filename: _f, "actual-size": _a, ...rest } = info
  return rest
}

/** The expected guest content of the overlay test: base plus the pattern written over it. */
const overlayContent = (): Buffer => {
  const expected = Buffer.alloc(4 << 20)
  expected.fill(0x41, 0, 1 << 20)
  expected.fill(0x77, 64 << 10, 192 << 10)
  expected.fill(0x42, 3 << 20, (3 << 20) + (64 << 10))
  return expected
}

/** Runs an export from the Export tab and saves the downloaded file as `saveAs`. */
const exportTo = async (page: Page, choice: { format: "raw" | "qcow2"; compression: "none" | "zlib" | "zstd" }, saveAs: string, screenshot?: string): Promise<string> => {
  await page.click('[data-tab="export"]')
  await page.selectOption('#export-form [name="format"]', choice.format)
  await page.selectOption('#export-form [name="compression"]', choice.compression)
  await page.selectOption("#export-via", "download")
  await page.fill("#export-name", path.basename(saveAs))
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export-button")])
  if (screenshot !== undefined) await f.shot(page, screenshot)
  const saved = path.join(f.dir, saveAs)
  await download.saveAs(saved)
  expect(await page.textContent("#export-status")).toContain(`Exported ${path.basename(saveAs)}`)
  return saved
}

describe("apps/web in Chromium", () => {
  it("opens an image over HTTP: info and map JSON equal qemu-img's, request counters, cluster map, hex view, check", async () => {
    const page = await f.newPage()
    await f.shot(page, "01-start")
    await openUrl(page, `${f.app.url}/base.qcow2`)
    expect(await page.textContent('[data-field="virtual size"]')).toBe("4 MiB (4194304 bytes)")
    expect(await page.textContent("#http-stats")).toMatch(/HTTP: \d+ requests, \d+ bytes fetched/)
    await f.shot(page, "02-info")
    const info = JSON.parse((await page.textContent('[data-testid="info-json"]')) ?? "")
    expect(info.filename).toBe(`${f.app.url}/base.qcow2`)
    expect(comparableInfo(info)).toEqual(comparableInfo(qemuJson(f, "qemu-img", "info", "--output=json", "base.qcow2")))
    // qemu-img's map text, byte for byte (the same file, so the same host offsets).
    expect(await page.textContent('[data-testid="map-json"]')).toBe(f.qemu("qemu-img", "map", "--output=json", "base.qcow2"))
    await page.click('[data-tab="json"]')
    await f.shot(page, "03-json")
    await page.click('[data-tab="map"]')
    // 1 MiB + 64 KiB of data in 64 KiB clusters.
    expect(await page.textContent('[data-category="data"]')).toBe("data: 17")
    expect(await page.textContent('[data-category="unallocated"]')).toBe("unallocated: 47")
    await page.selectOption("#map-cell", "24")
    await page.click("#map-draw")
    await f.shot(page, "04-cluster-map")
    await page.click('[data-tab="hex"]')
    await page.fill("#hex-offset", "3M")
    await page.click("#hex-form button")
    await page.waitForFunction(() => (document.getElementById("hex")?.textContent ?? "") !== "")
    expect(await page.textContent("#hex")).toContain("00300000:  42 42 42 42")
    await page.click('[data-tab="info"]')
    await page.click("#check-button")
    await page.waitForFunction(() => (document.getElementById("check-result")?.textContent ?? "") !== "")
    expect(await page.textContent("#check-result")).toContain("No errors were found on the image.")
    await page.context().close()
  })

  it("opens a deep link /?url= at once", async () => {
    const page = await f.newPage(`?url=${encodeURIComponent(`${f.app.url}/base.qcow2`)}`)
    await page.waitForSelector("text=Open: ")
    expect(await page.inputValue("#url-input")).toBe(`${f.app.url}/base.qcow2`)
    expect(JSON.parse((await page.textContent('[data-testid="info-json"]')) ?? "")["virtual-size"]).toBe(4 << 20)
    await page.context().close()
  })

  it("keeps an overlay in IndexedDB over a remote base: writes survive a reload; exports pass qemu-img check and compare", async () => {
    const page = await f.newPage()
    await page.click("#create-panel summary")
    await page.fill('#create-form [name="name"]', "vm/overlay.qcow2")
    await page.fill('#create-form [name="size"]', "")
    await page.fill('#create-form [name="backingFile"]', `${f.app.url}/base.qcow2`)
    await page.click("#create-form button")
    await page.waitForSelector("text=Open: idb://qcow2-web/vm/overlay.qcow2")
    await page.click('[data-tab="console"]')
    expect(await consoleRun(page, "write -P 0x77 64k 128k")).toContain("wrote 131072/131072 bytes at offset 65536")
    expect(await consoleRun(page, "flush")).toBe("qemu-io> flush\n")
    await page.reload()
    await page.waitForSelector('[data-store="vm/overlay.qcow2"]')
    await page.click('[data-store="vm/overlay.qcow2"] [data-action="open"]')
    await page.waitForSelector("text=Open: idb://qcow2-web/vm/overlay.qcow2")
    await page.click('[data-tab="console"]')
    expect(await consoleRun(page, "read -P 0x77 64k 128k")).toContain("read 131072/131072 bytes at offset 65536")
    expect(await consoleRun(page, "read -P 0x41 512k 4k")).toContain("read 4096/4096 bytes at offset 524288")
    expect(await consoleRun(page, "read -v 3M 64")).toContain("00300000:  42 42 42 42")
    await f.shot(page, "05-console")
    expect(await page.textContent("#chain")).toContain(`backing 1: ${f.app.url}/base.qcow2 (qcow2)`)
    const expected = path.join(f.dir, "overlay-expected.raw")
    fs.writeFileSync(expected, overlayContent())

    // Export flattens the chain: standalone images, clean and equal to the guest view.
    for (const [compression, file] of [["none", "flat.qcow2"], ["zlib", "flat-zlib.qcow2"], ["zstd", "flat-zstd.qcow2"]] as const) {
      const saved = await exportTo(page, { format: "qcow2", compression }, file, compression === "zlib" ? "06-export" : undefined)
      const info = qemuJson(f, "qemu-img", "info", "--output=json", saved)
      expect(info["backing-filename"]).toBeUndefined()
      expect(info["format-specific"].data["compression-type"]).toBe(compression === "zstd" ? "zstd" : "zlib")
      const check = qemuJson(f, "qemu-img", "check", "--output=json", saved)
      expect([check.corruptions ?? 0, check.leaks ?? 0, check["check-errors"]]).toEqual([0, 0, 0])
      expect(check["compressed-clusters"] ?? 0).toBe(compression === "none" ? 0 : 17)
      f.qemu("qemu-img", "compare", "-f", "qcow2", "-F", "raw", saved, expected)
    }
    const raw = await exportTo(page, { format: "raw", compression: "none" }, "flat.raw")
    expect(Buffer.compare(fs.readFileSync(raw), overlayContent())).toBe(0)

    // Commit into a standalone library image.
    await page.fill("#commit-name", "vm/standalone.qcow2")
    await page.click("#commit-button")
    await page.waitForSelector('[data-store="vm/standalone.qcow2"]')
    await page.selectOption("#export-via", "download")
    await f.shot(page, "07-library")
    const [download] = await Promise.all([page.waitForEvent("download"), page.click('[data-store="vm/standalone.qcow2"] [data-action="download"]')])
    const standalone = path.join(f.dir, "standalone.qcow2")
    await download.saveAs(standalone)
    expect(qemuJson(f, "qemu-img", "check", "--output=json", standalone)["check-errors"]).toBe(0)
    f.qemu("qemu-img", "compare", "-f", "qcow2", "-F", "raw", standalone, expected)
    await page.context().close()
  })

  it("saves through the File System Access API where the browser has it (the picker answered by a stub)", async () => {
    const page = await f.newPage()
    // The native dialog cannot be driven headless: the stub hands out an OPFS file, as the picker hands out a disk file.
    await page.evaluate(() => {
      ;(window as unknown as { showSaveFilePicker: unknown }).showSaveFilePicker = async (o: { suggestedName: string }) =>
        (await navigator.storage.getDirectory()).getFileHandle(`picked-${o.suggestedName}`, { create: true })
    })
    await openUrl(page, `${f.app.url}/base.qcow2`)
    await page.selectOption("#export-via", "picker")
    await page.click('[data-tab="export"]')
    await page.selectOption('#export-form [name="compression"]', "zstd")
    await page.fill("#export-name", "picked.qcow2")
    await page.click("#export-button")
    await page.waitForFunction(() => (document.getElementById("export-status")?.textContent ?? "").startsWith("Exported"))
    expect(await page.textContent("#export-status")).not.toContain("downloaded")
    const base64 = await page.evaluate(async () => {
      const file = await (await (await navigator.storage.getDirectory()).getFileHandle("picked-picked.qcow2")).getFile()
      const bytes = new Uint8Array(await file.arrayBuffer())
      let text = ""
      for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
      return btoa(text)
    })
    const saved = path.join(f.dir, "picked.qcow2")
    fs.writeFileSync(saved, Buffer.from(base64, "base64"))
    expect(qemuJson(f, "qemu-img", "check", "--output=json", saved)["compressed-clusters"]).toBe(17)
    f.qemu("qemu-img", "compare", saved, "base.qcow2")
    await page.context().close()
  })

  it("shows a readable error for a truncated or corrupt image, and keeps working", async () => {
    const good = fs.readFileSync(path.join(f.dir, "base.qcow2"))
    fs.writeFileSync(path.join(f.dir, "truncated.qcow2"), good.subarray(0, 64))
    const corrupt = Buffer.from(good)
    corrupt.writeBigUInt64BE(0x12345n, 40) // L1 table offset, not cluster aligned
    fs.writeFileSync(path.join(f.dir, "corrupt.qcow2"), corrupt)
    const page = await f.newPage()
    for (const name of ["truncated.qcow2", "corrupt.qcow2"]) {
      await page.fill("#url-input", `${f.app.url}/${name}`)
      await page.click("#url-form button")
      await page.waitForSelector("#status.error")
      expect(await page.textContent("#status")).toMatch(name === "corrupt.qcow2" ? /^Error: Active L1 table offset invalid$/ : /^Error: .{10,}/)
      if (name === "corrupt.qcow2") await f.shot(page, "08-error")
    }
    await openUrl(page, `${f.app.url}/base.qcow2`)
    expect(await page.getAttribute("#status", "class")).not.toContain("error")
    await page.context().close()
  })

  it("does not follow a hostile image's backing file to another origin until the user approves it", async () => {
    const page = await f.newPage()
    const before = f.other.requests.length
    await page.fill("#url-input", `${f.app.url}/hostile.qcow2`)
    await page.click("#url-form button")
    await page.waitForSelector("#approve")
    expect(await page.textContent("#status")).toContain(`names ${f.other.url}/base.qcow2, which needs your approval`)
    expect(await page.textContent("#plan")).toContain("blocked")
    expect(f.other.requests.length).toBe(before)
    await page.click("#approve")
    await page.waitForSelector("text=Open: ")
    expect(f.other.requests.length).toBeGreaterThan(before)
    expect(await page.textContent("#chain")).toContain(`backing 1: ${f.other.url}/base.qcow2`)
    await page.context().close()
  })

  it("opens local files from the picker: info and map equal qemu-img's; the overlay finds its backing file among them, and only there", async () => {
    f.qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "local.qcow2")
    f.qemu("qemu-io", "-c", "write -P 0x55 2M 4k", "local.qcow2")
    const page = await f.newPage()
    await page.setInputFiles("#file-input", [path.join(f.dir, "local.qcow2"), path.join(f.dir, "base.qcow2")])
    await page.waitForSelector("text=Open: picked:local.qcow2")
    expect(comparableInfo(JSON.parse((await page.textContent('[data-testid="info-json"]')) ?? ""))).toEqual(
      comparableInfo(qemuJson(f, "qemu-img", "info", "--output=json", "local.qcow2"))
    )
    expect(await page.textContent('[data-testid="map-json"]')).toBe(f.qemu("qemu-img", "map", "--output=json", "local.qcow2"))
    await page.click('[data-tab="console"]')
    expect(await consoleRun(page, "read -P 0x55 2M 4k")).toContain("read 4096/4096 bytes at offset 2097152")
    expect(await consoleRun(page, "read -P 0x41 0 4k")).toContain("read 4096/4096 bytes at offset 0")
    // Picked files open read-only.
    expect(await consoleRun(page, "write 0 4k")).toContain("write failed")
    expect(await page.textContent('[data-category="backing"]')).toBe("backing: 17")
    await page.context().close()
  })

  it("creates an image with the create options qemu-img reads back, and shows snapshots and bitmaps", async () => {
    const page = await f.newPage()
    await page.click("#create-panel summary")
    await page.fill('#create-form [name="name"]', "opts.qcow2")
    await page.fill('#create-form [name="size"]', "3M")
    await page.selectOption('#create-form [name="clusterSize"]', "16384")
    await page.selectOption('#create-form [name="refcountBits"]', "8")
    await page.selectOption('#create-form [name="compressionType"]', "zstd")
    await page.selectOption('#create-form [name="preallocation"]', "metadata")
    await page.check('#create-form [name="lazyRefcounts"]')
    await page.check('#create-form [name="extendedL2"]')
    await page.click("#create-form button")
    await page.waitForSelector("text=Open: idb://qcow2-web/opts.qcow2")
    expect(await page.textContent('[data-feature="extended L2"] .on')).toBe("set")
    await page.selectOption("#export-via", "download")
    const [download] = await Promise.all([page.waitForEvent("download"), page.click('[data-store="opts.qcow2"] [data-action="download"]')])
    const saved = path.join(f.dir, "opts.qcow2")
    await download.saveAs(saved)
    const info = qemuJson(f, "qemu-img", "info", "--output=json", saved)
    expect([info["virtual-size"], info["cluster-size"]]).toEqual([3 << 20, 16384])
    expect(info["format-specific"].data).toMatchObject({ "refcount-bits": 8, "compression-type": "zstd", "lazy-refcounts": true, "extended-l2": true })
    expect(qemuJson(f, "qemu-img", "check", "--output=json", saved)["check-errors"]).toBe(0)

    f.qemu("qemu-img", "snapshot", "-c", "before-upgrade", "base.qcow2")
    f.qemu("qemu-img", "bitmap", "--add", "base.qcow2", "backup-0")
    await openUrl(page, `${f.app.url}/base.qcow2`)
    expect(await page.textContent("#snapshots")).toContain("before-upgrade")
    expect(await page.textContent("#bitmaps")).toContain("backup-0")
    expect(comparableInfo(JSON.parse((await page.textContent('[data-testid="info-json"]')) ?? ""))).toEqual(
      comparableInfo(qemuJson(f, "qemu-img", "info", "--output=json", "base.qcow2"))
    )
    f.qemu("qemu-img", "snapshot", "-d", "before-upgrade", "base.qcow2")
    f.qemu("qemu-img", "bitmap", "--remove", "base.qcow2", "backup-0")
    await page.context().close()
  })

  it("cancels an export: no download, no scratch store left, and the next export works", async () => {
    f.qemu("qemu-img", "create", "-f", "qcow2", "big.qcow2", "48M")
    f.qemu("qemu-io", "-c", "write -P 0x61 0 48M", "big.qcow2")
    const page = await f.newPage()
    await openUrl(page, `${f.app.url}/big.qcow2`)
    await page.click('[data-tab="export"]')
    await page.selectOption('#export-form [name="compression"]', "zlib")
    await page.selectOption("#export-via", "download")
    let downloads = 0
    page.on("download", () => downloads++)
    await page.click("#export-button")
    await page.waitForFunction(() => (document.getElementById("export-progress") as HTMLProgressElement).value > 0)
    await page.click("#export-cancel")
    await page.waitForFunction(() => document.getElementById("export-status")?.textContent === "Cancelled.")
    const scratch = await page.evaluate(async () => {
      const stores = await new Promise<string[]>((resolve, reject) => {
        const open = indexedDB.open("qcow2-web-scratch")
        open.onsuccess = () => {
          const db = open.result
          if (!db.objectStoreNames.contains("files")) return resolve([])
          const all = db.transaction("files").objectStore("files").getAllKeys()
          all.onsuccess = () => resolve(all.result.map(String))
          all.onerror = () => reject(all.error)
        }
        open.onerror = () => reject(open.error)
      })
      return stores
    })
    expect(scratch).toEqual([])
    expect(downloads).toBe(0)
    const saved = await exportTo(page, { format: "raw", compression: "none" }, "big.raw")
    f.qemu("qemu-img", "compare", "-F", "raw", "big.qcow2", saved)
    await page.context().close()
  })

  it("asks for the passphrase of an encrypted image and never stores it", async () => {
    await encrypted
    f.qemu("qemu-io", "--object", "secret,id=s0,data=hunter2", "--image-opts", "-c", "write -P 0x33 0 64k", "driver=qcow2,file.filename=secret.qcow2,encrypt.key-secret=s0")
    const page = await f.newPage()
    await page.fill("#url-input", `${f.app.url}/secret.qcow2`)
    await page.click("#url-form button")
    await page.waitForSelector("#passphrase-dialog[open]")
    await page.fill("#passphrase-input", "hunter2")
    await f.shot(page, "09-passphrase")
    await page.click("#passphrase-ok")
    await page.waitForSelector("text=Open: ")
    expect(await page.textContent('[data-field="encryption"]')).toBe("LUKS")
    await page.click('[data-tab="console"]')
    expect(await consoleRun(page, "read -P 0x33 0 64k")).toContain("read 65536/65536 bytes at offset 0")
    const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + document.cookie)
    expect(stored).not.toContain("hunter2")
    await page.context().close()
  })
})
