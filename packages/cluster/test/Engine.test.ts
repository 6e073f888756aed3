import { readFileSync, writeFileSync } from "node:fs"
import { Effect } from "effect"
import { readL1Entry, readL2Entry, readRefcount, makeGeometry } from "@qcow2/format"
import { afterAll, describe, expect, it } from "vitest"
import { fail, memoryBacking, openEngine, pattern, qemuCheck, qemuImg, qemuIo, run, scratch } from "./engine.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

const K = 1024
const cs = 64 * K
/** qemu-img's fresh 64 KiB layout: reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data 0x50000. */
const L1 = 0x30000
const REFBLOCK = 0x20000
const geometry = makeGeometry(16, false, 4)

const refcountOf = (bytes: Uint8Array, cluster: number) => readRefcount(bytes.subarray(REFBLOCK, REFBLOCK + cs), cluster, 4)
const l2EntryOf = (bytes: Uint8Array, guest: number) => {
  const l2 = readL1Entry(bytes.subarray(L1), Math.floor(guest / (cs * geometry.l2Entries))).l2Offset
  return readL2Entry(bytes.subarray(l2, l2 + cs), Math.floor(guest / cs) % geometry.l2Entries, geometry)
}

describe("Qcow2Engine", () => {
  it("copy-on-write keeps the head and tail of a cluster from the backing layer and links the new cluster after the data", async () => {
    const file = tmp.path("cow.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    const below = pattern(1 << 20, 7)
    const { engine, bytes } = await openEngine(file, { backing: memoryBacking(below) })
    const data = pattern(1000, 9)
    await run(engine.write(cs + 100, data))
    await run(engine.flush())
    const out = new Uint8Array(cs)
    await run(engine.read(cs, out))
    const expected = below.slice(cs, 2 * cs)
    expected.set(data, 100)
    expect(out).toEqual(expected)
    const image = await bytes()
    const entry = l2EntryOf(image, cs)
    expect(entry).toMatchObject({ _tag: "Normal", copied: true })
    const host = (entry as { hostOffset: number }).hostOffset
    expect(image.subarray(host, host + cs)).toEqual(expected)
    expect(refcountOf(image, host / cs)).toBe(1)
    // Untouched clusters still come from below.
    const other = new Uint8Array(4 * K)
    await run(engine.read(3 * cs, other))
    expect(other).toEqual(below.subarray(3 * cs, 3 * cs + 4 * K))
  })

  it("frees what a discard drops, and reuses it; qemu-img check stays clean", async () => {
    const file = tmp.path("free.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    const { engine, bytes, save } = await openEngine(file)
    await run(engine.write(0, pattern(2 * cs, 1)))
    await run(engine.flush())
    const first = (l2EntryOf(await bytes(), 0) as { hostOffset: number }).hostOffset
    await run(engine.discard(0, cs))
    await run(engine.flush())
    let image = await bytes()
    expect(l2EntryOf(image, 0)).toMatchObject({ _tag: "Zero", hostOffset: 0 })
    expect(refcountOf(image, first / cs)).toBe(0)
    await run(engine.write(4 * cs, pattern(cs, 2)))
    await run(engine.close())
    image = await bytes()
    expect(l2EntryOf(image, 4 * cs)).toMatchObject({ _tag: "Normal", hostOffset: first })
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    expect(qemuIo("-c", `read -P 0 0 ${cs}`, file)).not.toMatch(/fail|mismatch/i)
  })

  it("copies an L2 table shared with a snapshot before changing it, leaving the snapshot intact", async () => {
    const file = tmp.path("snapshot.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    qemuIo("-c", "write -P 0x11 0 128k", file)
    qemuImg("snapshot", "-c", "before", file)
    const { engine, save } = await openEngine(file)
    await run(engine.write(4 * K, new Uint8Array(8 * K).fill(0x22)))
    await run(engine.close())
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    const active = qemuIo("-c", "read -P 0x11 0 4k", "-c", "read -P 0x22 4k 8k", "-c", "read -P 0x11 12k 116k", file)
    expect(active).not.toMatch(/fail|mismatch/i)
    const snap = tmp.path("snapshot.raw")
    qemuImg("convert", "-l", "snapshot.name=before", "-O", "raw", file, snap)
    expect(qemuIo("-f", "raw", "-c", "read -P 0x11 0 128k", snap)).not.toMatch(/fail|mismatch/i)
  })

  it("two concurrent writes to one unallocated cluster allocate it once and both land", async () => {
    const file = tmp.path("inflight.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    const { engine, save, bytes } = await openEngine(file)
    const a = new Uint8Array(cs / 2).fill(0xaa)
    const b = new Uint8Array(cs / 2).fill(0xbb)
    await run(Effect.all([engine.write(0, a), engine.write(cs / 2, b)], { concurrency: "unbounded" }))
    await run(engine.close())
    const out = new Uint8Array(cs)
    await run(engine.read(0, out))
    expect(out.subarray(0, cs / 2).every((x) => x === 0xaa)).toBe(true)
    expect(out.subarray(cs / 2).every((x) => x === 0xbb)).toBe(true)
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    const image = await bytes()
    // Header, reftable, refblock, L1, L2 and one data cluster.
    let used = 0
    for (let c = 0; c < 16; c++) used += refcountOf(image, c) > 0 ? 1 : 0
    expect(used).toBe(6)
  })

  it("an unaligned refcount block is corruption: QEMU's message, the corrupt bit, no write", async () => {
    const file = tmp.path("refblock.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    const raw = await (await openEngine(file)).bytes()
    raw.set([0, 0, 0, 0, 0, 2, 6, 0], 0x10000)
    const { writeFileSync } = await import("node:fs")
    writeFileSync(file, raw)
    const { engine, bytes } = await openEngine(file)
    const before = await bytes()
    const error = await fail(engine.write(121 * K, new Uint8Array(3 * K).fill(1)))
    expect(error).toMatchObject({ reason: "Corrupt" })
    // QEMU prints the index with %#x: "0" for zero (iotest 060)
    expect(error.message).toContain("Refblock offset 0x20600 unaligned (reftable index: 0)")
    await run(engine.close())
    const after = await bytes()
    expect(after[79] & 2).toBe(2)
    after[79] &= ~2
    expect(after).toEqual(before)
  })

  it("writes over metadata are refused and mark the image corrupt (overlap check)", async () => {
    const file = tmp.path("overlap.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    qemuIo("-c", "write -P 1 0 64k", file)
    const raw = await (await openEngine(file)).bytes()
    // L2 entry 0 -> the refcount block, COPIED.
    raw.set([0x80, 0, 0, 0, 0, 0x02, 0, 0], 0x40000)
    const { writeFileSync } = await import("node:fs")
    writeFileSync(file, raw)
    const { engine, bytes } = await openEngine(file)
    const error = await fail(engine.write(0, new Uint8Array(512).fill(9)))
    expect(error.message).toContain("overlaps with refcount block")
    expect(engine.integrity.isCorrupt).toBe(true)
    const again = await fail(engine.write(64 * K, new Uint8Array(512)))
    expect(again).toMatchObject({ reason: "Corrupt" })
    const image = await bytes()
    expect(image.subarray(REFBLOCK, REFBLOCK + 512).some((x) => x === 9)).toBe(false)
  })

  it("new clusters of a write continue right after its in-place part when free there, as qemu-io places them", async () => {
    const file = tmp.path("contiguous.qcow2")
    qemuImg("create", "-f", "qcow2", file, "1M")
    // Data at clusters 5, 6, 7; discarding 256k leaves cluster 6 free.
    qemuIo("-c", "write -P 1 0 64k", "-c", "write -P 2 256k 64k", "-c", "write -P 3 512k 64k", "-c", "discard 256k 64k", file)
    const theirs = tmp.path("contiguous-qemu.qcow2")
    writeFileSync(theirs, readFileSync(file))
    qemuIo("-c", "write -P 9 512k 128k", theirs)
    const { engine, bytes, save } = await openEngine(file)
    await run(engine.write(512 * K, new Uint8Array(2 * cs).fill(9)))
    await run(engine.close())
    const image = await bytes()
    // 512k stays in place at cluster 7; 576k goes to cluster 8 (qemu-io too), not to the hole at 6.
    expect(l2EntryOf(image, 576 * K)).toMatchObject({ _tag: "Normal", hostOffset: 8 * cs, copied: true })
    expect(l2EntryOf(readFileSync(theirs), 576 * K)).toMatchObject({ _tag: "Normal", hostOffset: 8 * cs, copied: true })
    expect(refcountOf(image, 6)).toBe(0)
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })
})
