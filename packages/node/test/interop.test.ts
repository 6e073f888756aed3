/**
 * The Promise API against qemu-img and qemu-io: images written here pass
 * `qemu-img check` and compare equal to a twin QEMU wrote; images QEMU
 * wrote read back as `qemu-img convert -O raw` reads them; info, map and
 * check give qemu-img's data.
 */
import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { create, open } from "../src/index.js"
import { pattern, qemuCheck, sameBytes, qemuCompare, qemuImg, qemuIo, qemuRaw, tempDir } from "./helpers.js"

const MiB = 2 ** 20
const fill = (length: number, byte: number) => new Uint8Array(length).fill(byte)

describe("Promise API interop with qemu-img", () => {
  const tmp = tempDir()
  afterAll(() => tmp.cleanup())

  it("writes an image qemu-img checks clean and finds equal to a twin written by qemu-io", async () => {
    const mine = tmp.path("mine.qcow2")
    const twin = tmp.path("twin.qcow2")
    await create(mine, { size: 16 * MiB })
    qemuImg("create", "-q", "-f", "qcow2", twin, "16M")
    const img = await open(mine)
    await img.write(1000, fill(70000, 0xaa))
    await img.write(MiB, fill(128 * 1024, 0xbb))
    await img.writeZeroes(MiB + 4096, 8192)
    await img.write(2 * MiB, fill(65536, 0xdd))
    await img.discard(2 * MiB, 65536)
    await img.writeCompressed(4 * MiB, fill(65536, 0xcc))
    await img.flush()
    await img.close()
    qemuIo(
      "-f", "qcow2",
      "-c", "write -P 0xaa 1000 70000",
      "-c", "write -P 0xbb 1M 128k",
      "-c", "write -z 1052672 8192",
      "-c", "write -P 0xdd 2M 64k",
      "-c", "discard 2M 64k",
      "-c", "write -c -P 0xcc 4M 64k",
      twin
    )
    expect(qemuCheck(mine).exitCode).toBe(0)
    expect(qemuCompare("-f", "qcow2", "-F", "qcow2", mine, twin)).toBe(0)
    expect(qemuCompare("-f", "qcow2", "-F", "qcow2", "-s", mine, twin)).toBe(0)
  })

  it("reads an image qemu-img made and qemu-io wrote as qemu-img convert -O raw does", async () => {
    const image = tmp.path("qemu.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", image, "8M")
    qemuIo(
      "-f", "qcow2",
      "-c", "write -P 0x11 0 12k",
      "-c", "write -P 0x22 100k 7000",
      "-c", "write -c -P 0x33 1M 4k",
      "-c", "write -z 4k 4k",
      "-c", "write -P 0x44 8388096 512",
      image
    )
    const expected = qemuRaw(image, tmp.path("qemu.raw"))
    await using img = await open(image, { readOnly: true })
    expect(img.format).toBe("qcow2")
    expect(img.virtualSize).toBe(8 * MiB)
    expect(sameBytes(await img.read(0, img.virtualSize), expected)).toBe(true)
    const into = new Uint8Array(7000)
    expect(await img.readInto(100 * 1024, into)).toBe(into)
    expect(sameBytes(into, expected.subarray(100 * 1024, 100 * 1024 + 7000))).toBe(true)
  })

  it("info(), map() and check() give qemu-img's data", async () => {
    const base = tmp.path("base.qcow2")
    const top = tmp.path("top.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", base, "4M")
    qemuIo("-f", "qcow2", "-c", "write -P 1 0 256k", "-c", "write -c -P 2 1M 64k", base)
    qemuImg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemuIo("-f", "qcow2", "-c", "write -P 3 128k 64k", "-c", "write -z 3M 64k", top)
    await using img = await open(top, { readOnly: true })
    expect(await img.info()).toEqual(JSON.parse(qemuImg("info", "--output=json", top)))
    expect(await img.info({ backingChain: true })).toEqual(JSON.parse(qemuImg("info", "--output=json", "--backing-chain", top)))
    expect(await img.map()).toEqual(JSON.parse(qemuImg("map", "--output=json", top)))
    expect(await img.map({ start: 64 * 1024, length: 1024 * 1024 })).toEqual(
      JSON.parse(qemuImg("map", "--output=json", "--start-offset=64k", "--max-length=1M", top))
    )
    const status = await img.blockStatus(128 * 1024, 4 * MiB - 128 * 1024)
    expect(status).toMatchObject({ offset: 128 * 1024, length: 65536, depth: 0, present: true, data: true, zero: false })
    const checked = await img.check()
    const qemu = qemuCheck(top)
    expect(qemu.exitCode).toBe(0)
    expect(checked).toMatchObject({
      checkErrors: 0,
      corruptions: 0,
      leaks: 0,
      imageEndOffset: qemu["image-end-offset"],
      totalClusters: qemu["total-clusters"],
      allocatedClusters: qemu["allocated-clusters"],
      // qemu-img leaves these out when they are 0.
      fragmentedClusters: qemu["fragmented-clusters"] ?? 0,
      compressedClusters: qemu["compressed-clusters"] ?? 0
    })
  })

  it("creates raw images and qcow2 images with -o options as qemu-img does", async () => {
    const raw = tmp.path("new.raw")
    await create(raw, { format: "raw", size: 3 * MiB + 1 })
    expect(JSON.parse(qemuImg("info", "--output=json", raw))).toMatchObject({ format: "raw", "virtual-size": 3 * MiB + 512 })
    {
      await using img = await open(raw)
      expect(img.format).toBe("raw")
      await img.write(4096, pattern(10000, 7))
    }
    expect(readFileSync(raw).subarray(4096, 14096)).toEqual(Buffer.from(pattern(10000, 7)))

    const small = tmp.path("small.qcow2")
    await create(small, { size: 5 * MiB, clusterSize: 16384, refcountBits: 8, lazyRefcounts: true, extendedL2: true, compressionType: "zstd" })
    const twin = tmp.path("small-twin.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=16384,refcount_bits=8,lazy_refcounts=on,extended_l2=on,compression_type=zstd", twin, "5M")
    const ours = JSON.parse(qemuImg("info", "--output=json", small))
    const theirs = JSON.parse(qemuImg("info", "--output=json", twin))
    expect({ ...ours, filename: "", "actual-size": 0 }).toEqual({ ...theirs, filename: "", "actual-size": 0 })
    expect(qemuCheck(small).exitCode).toBe(0)
  })

  it("resize grows and, with shrink, shrinks the image as qemu-img resize", async () => {
    const path = tmp.path("resize.qcow2")
    await create(path, { size: 4 * MiB })
    {
      await using img = await open(path)
      await img.write(3 * MiB, fill(4096, 9))
      await img.resize(12 * MiB)
      expect(img.virtualSize).toBe(12 * MiB)
      await img.write(11 * MiB, fill(4096, 8))
      await expect(img.resize(2 * MiB)).rejects.toMatchObject({ _tag: "ImageError", reason: "InvalidArgument" })
      await img.resize(2 * MiB, { shrink: true })
    }
    expect(JSON.parse(qemuImg("info", "--output=json", path))["virtual-size"]).toBe(2 * MiB)
    expect(qemuCheck(path).exitCode).toBe(0)
  })

  it("serves many requests at once on one image", async () => {
    const path = tmp.path("concurrent.qcow2")
    const expected = tmp.path("concurrent.raw")
    await create(path, { size: 8 * MiB })
    await create(expected, { format: "raw", size: 8 * MiB })
    const writes = Array.from({ length: 48 }, (_, i) => ({ offset: ((i * 37) % 120) * 65536 + (i % 3) * 1000, data: pattern(5000 + i * 100, i + 1) }))
    // Overlapping requests in flight at once have no defined order; these do not overlap.
    const seen = new Set<number>()
    const disjoint = writes.filter((w) => {
      const cluster = Math.floor(w.offset / 65536)
      if (seen.has(cluster)) return false
      seen.add(cluster)
      return true
    })
    {
      await using img = await open(path)
      await using raw = await open(expected, { format: "raw" })
      await Promise.all(disjoint.map((w) => img.write(w.offset, w.data)))
      for (const w of disjoint) await raw.write(w.offset, w.data)
      const reads = await Promise.all(disjoint.map((w) => img.read(w.offset, w.data.length)))
      reads.forEach((got, i) => expect(got).toEqual(disjoint[i]!.data))
    }
    expect(qemuCheck(path).exitCode).toBe(0)
    expect(qemuCompare("-f", "qcow2", "-F", "raw", path, expected)).toBe(0)
  })
})

describe("await using", () => {
  const tmp = tempDir()
  beforeAll(() => qemuImg("create", "-q", "-f", "qcow2", tmp.path("u.qcow2"), "1M"))
  afterAll(() => tmp.cleanup())

  it("closes (and flushes) the image at the end of the block", async () => {
    let escaped: Awaited<ReturnType<typeof open>> | undefined
    {
      await using img = await open(tmp.path("u.qcow2"))
      escaped = img
      await img.write(0, fill(512, 5))
      expect(img.closed).toBe(false)
    }
    expect(escaped.closed).toBe(true)
    expect(qemuRaw(tmp.path("u.qcow2"), tmp.path("u.raw")).subarray(0, 512)).toEqual(fill(512, 5))
    await expect(escaped.read(0, 1)).rejects.toMatchObject({ _tag: "ImageClosedError" })
  })
})
