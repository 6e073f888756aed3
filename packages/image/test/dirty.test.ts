import { execFileSync, spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { openImage } from "../src/index.js"
import { qemuCheck, qemuImg, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

describe("dirty lazy-refcount images", () => {
  it("read-only open reads without repair; read-write open repairs and clears the dirty bit", async () => {
    const file = tmp.path("dirty.qcow2")
    qemuImg("create", "-f", "qcow2", "-o", "lazy_refcounts=on", file, "4M")
    // Killed mid-session: refcounts on disk are stale, the dirty bit is set.
    spawnSync("qemu-io", ["-c", "write -P 0x5a 0 256k", "-c", "write -P 0x6b 1M 64k", "-c", "sigraise 9", file])
    const info = JSON.parse(qemuImg("info", "--output=json", file))
    expect(info["dirty-flag"]).toBe(true)
    const raw = tmp.path("dirty.raw")
    execFileSync("qemu-img", ["convert", "-U", "-O", "raw", file, raw])
    const expected = readFileSync(raw)
    const readBack = (readOnly: boolean) =>
      runNode(
        Effect.gen(function* () {
          const image = yield* openImage(file, { readOnly })
          const out = new Uint8Array(image.virtualSize)
          yield* image.read(0, out)
          return out
        })
      )
    expect(Buffer.compare(Buffer.from(await readBack(true)), expected)).toBe(0)
    expect(JSON.parse(qemuImg("info", "--output=json", file))["dirty-flag"]).toBe(true)
    expect(Buffer.compare(Buffer.from(await readBack(false)), expected)).toBe(0)
    expect(JSON.parse(qemuImg("info", "--output=json", file))["dirty-flag"]).toBe(false)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })

  it("check -r all through an open image repairs leaks and the image stays usable", async () => {
    const file = tmp.path("leak.qcow2")
    qemuImg("create", "-f", "qcow2", file, "4M")
    execFileSync("qemu-io", ["-c", "write -P 1 0 1M", file])
    // Leak: bump the refcount of cluster 0 area's neighbour by patching the refcount block (16-bit entries at 0x20000).
    const fs = require("node:fs")
    const end = fs.statSync(file).size
    fs.truncateSync(file, end + 65536)
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, Buffer.from([0, 1]), 0, 2, 0x20000 + 2 * (end / 65536))
    fs.closeSync(fd)
    expect(qemuCheck(file).exitCode).toBe(3)
    const result = await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        const r = yield* image.check({ repair: "all" })
        yield* image.write(2 << 20, new Uint8Array(65536).fill(9))
        return r
      })
    )
    expect(result.leaksFixed).toBe(1)
    expect(result.leaks).toBe(0)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })
})
