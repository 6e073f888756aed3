import { execFileSync } from "node:child_process"
import { closeSync, openSync, writeSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { openImage } from "../src/index.js"
import { qemuImg, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

const poke = (file: string, offset: number, bytes: number[]) => {
  const fd = openSync(file, "r+")
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset)
  closeSync(fd)
}

const info = (file: string) => JSON.parse(qemuImg("info", "--output=json", file))

describe("structural problems found while writing mark the image corrupt", () => {
  it("an L2 entry pointing into the L1 table: the write is refused, the corrupt bit set, later requests fail with ENOMEDIUM (QEMU's bs->drv = NULL), read-write reopen refused, a read-only open reads", async () => {
    const file = tmp.path("overlap.qcow2")
    qemuImg("create", "-f", "qcow2", file, "4M")
    execFileSync("qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -P 2 1M 64k", file])
    // L2 table at 0x40000; entry 0 -> host 0x30000 (the L1 table), COPIED.
    poke(file, 0x40000, [0x80, 0, 0, 0, 0, 0x03, 0, 0])
    const outcome = await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        const first = yield* Effect.flip(image.write(0, new Uint8Array(512).fill(7)))
        const second = yield* Effect.flip(image.write(1 << 20, new Uint8Array(512).fill(8)))
        const read = yield* Effect.flip(image.read(1 << 20, new Uint8Array(512)))
        const status = yield* Effect.flip(image.blockStatus(0, 512))
        yield* image.flush()
        return { first, second, read, status }
      })
    )
    expect(outcome.first).toMatchObject({ reason: "Corrupt", errno: "EIO" })
    expect(outcome.first.message).toContain("L1")
    expect(outcome.second).toMatchObject({ reason: "Corrupt", errno: "ENOMEDIUM" })
    expect(outcome.read).toMatchObject({ reason: "Corrupt", errno: "ENOMEDIUM" })
    expect(outcome.status).toMatchObject({ errno: "ENOMEDIUM" })
    expect(info(file)["format-specific"].data.corrupt).toBe(true)
    const reopen = await runNode(Effect.flip(openImage(file)))
    expect(reopen).toMatchObject({ reason: "Corrupt" })
    const readOnly = await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true })
        const out = new Uint8Array(512)
        yield* image.read(1 << 20, out)
        return out[0]
      })
    )
    expect(readOnly).toBe(2)
  })

  it("an unaligned L2 table offset in the L1 table is corruption, reported with the offset", async () => {
    const file = tmp.path("unaligned.qcow2")
    qemuImg("create", "-f", "qcow2", file, "4M")
    execFileSync("qemu-io", ["-c", "write -P 1 0 64k", file])
    poke(file, 0x30000, [0x80, 0, 0, 0, 0, 0x04, 0x02, 0x00])
    const error = await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        return yield* Effect.flip(image.read(0, new Uint8Array(512)))
      })
    )
    expect(error).toMatchObject({ reason: "Corrupt" })
    // QEMU's wording (qcow2_get_host_offset): "L2 table offset 0x40200 unaligned (L1 index: 0)"
    expect(error.message).toMatch(/^L2 table offset 0x40200 unaligned \(L1 index: 0\)/)
    expect(info(file)["format-specific"].data.corrupt).toBe(true)
  })

  it("discarding a cluster whose refcount is already 0 succeeds without a corruption event, as QEMU's does (qcow2_free_clusters only prints)", async () => {
    const file = tmp.path("underflow.qcow2")
    qemuImg("create", "-f", "qcow2", file, "4M")
    execFileSync("qemu-io", ["-c", "write -P 1 0 64k", file])
    // Refcount of the data cluster (cluster 5) -> 0, entry still points to it.
    poke(file, 0x20000 + 2 * 5, [0, 0])
    await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        yield* image.discard(0, 65536)
        yield* image.flush()
      })
    )
    expect(info(file)["format-specific"].data.corrupt).toBe(false)
    // The entry is gone and the cluster was free already: nothing left to report.
    expect(qemuImg("check", file)).toContain("No errors were found on the image.")
  })
})
