import { inflateRawSync } from "node:zlib"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import {
  FormatError,
  IncompatibleFeature,
  decodeCompressedDescriptor,
  decodeImageHeader,
  encodeCompressedDescriptor,
  l1EntriesFor,
  l2EntryHigh,
  l2EntryLow,
  makeGeometry,
  maxCompressedSize,
  readL1Entry,
  readL2Entry,
  writeL1Entry,
  writeL2Entry,
  type Geometry,
  type L2Entry
} from "../src/index.js"
import { qemuImg, qemuIo, readBytes, scratch } from "./qemu.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength)
const setWord = (b: Uint8Array, o: number, hi: number, lo: number): void => {
  dv(b).setUint32(o, hi >>> 0)
  dv(b).setUint32(o + 4, lo >>> 0)
}
const fail = (f: () => unknown): FormatError => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError)
    return e as FormatError
  }
  throw new Error("expected a FormatError")
}

const ALL_CLUSTER_BITS = [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
const EXTENDED_CLUSTER_BITS = ALL_CLUSTER_BITS.filter((b) => b >= 14)

/** A cluster-aligned host offset below 2^53 (and 2^56). */
const alignedOffset = (g: Geometry) =>
  fc.integer({ min: 0, max: 2 ** (53 - g.clusterBits) - 1 }).map((n) => n * g.clusterSize)

/** Compressed entries whose size is exactly what the descriptor stores, so they round-trip. */
const compressedEntry = (g: Geometry) => {
  const shift = 62 - (g.clusterBits - 8)
  return fc
    .record({
      hostOffset: fc.integer({ min: 0, max: 2 ** Math.min(shift, 53) - 1 }),
      sectors: fc.integer({ min: 1, max: 2 ** (g.clusterBits - 8) })
    })
    .map(({ hostOffset, sectors }): L2Entry => ({
      _tag: "Compressed",
      hostOffset,
      compressedSize: sectors * 512 - (hostOffset % 512)
    }))
}

const standardEntry = (g: Geometry) =>
  fc.oneof(
    fc.constant<L2Entry>({ _tag: "Unallocated" }),
    fc.record({ hostOffset: alignedOffset(g).filter((o) => o > 0), copied: fc.boolean() }).map((e): L2Entry => ({ _tag: "Normal", ...e })),
    fc.record({ hostOffset: alignedOffset(g), copied: fc.boolean() }).map((e): L2Entry => ({ _tag: "Zero", ...e })),
    compressedEntry(g)
  )

const subclusterEntry = (g: Geometry) =>
  fc
    .record({ hostOffset: alignedOffset(g), copied: fc.boolean(), a: fc.nat({ max: 0xffffffff }), z: fc.nat({ max: 0xffffffff }) })
    .map(({ hostOffset, copied, a, z }): L2Entry => {
      const allocatedMask = hostOffset === 0 && !copied ? 0 : a
      return { _tag: "Subclusters", hostOffset, copied, allocatedMask, zeroMask: (z & ~allocatedMask) >>> 0 }
    })

describe("L1 entries", () => {
  it("round-trip (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 44 - 1 }), fc.boolean(), fc.nat({ max: 511 }), (n, copied, index) => {
        const table = new Uint8Array(512 * 8)
        writeL1Entry(table, index, n * 512, copied)
        expect(readL1Entry(table, index)).toEqual({ l2Offset: n * 512, copied, reservedBitsSet: false })
        expect(table.every((b, i) => b === 0 || (i >= index * 8 && i < index * 8 + 8))).toBe(true)
      })
    )
  })
  it("flags reserved bits and rejects offsets >= 2^53", () => {
    const t = new Uint8Array(8)
    setWord(t, 0, 0x01000000, 0x10000)
    expect(readL1Entry(t, 0).reservedBitsSet).toBe(true)
    setWord(t, 0, 0, 0x10001)
    expect(readL1Entry(t, 0)).toEqual({ l2Offset: 0x10000, copied: false, reservedBitsSet: true })
    setWord(t, 0, 0x80200000, 0)
    expect(fail(() => readL1Entry(t, 0)).reason).toBe("OffsetTooLarge")
    expect(fail(() => writeL1Entry(t, 0, 100, false)).reason).toBe("InvalidField")
  })
  it("l1EntriesFor matches QEMU's size_to_l1", () => {
    expect(l1EntriesFor(0, makeGeometry(16, false, 4))).toBe(0)
    expect(l1EntriesFor(1, makeGeometry(16, false, 4))).toBe(1)
    expect(l1EntriesFor(2 ** 29, makeGeometry(16, false, 4))).toBe(1)
    expect(l1EntriesFor(2 ** 29 + 1, makeGeometry(16, false, 4))).toBe(2)
    expect(l1EntriesFor(2 ** 28, makeGeometry(16, true, 4))).toBe(1)
    expect(l1EntriesFor(2 ** 28 + 1, makeGeometry(16, true, 4))).toBe(2)
    expect(l1EntriesFor(2 ** 60, makeGeometry(21, false, 4))).toBe(2 ** 21)
  })
})

describe("compressed descriptors", () => {
  it("QEMU's csize_shift example: 64 KiB clusters use x = 54 and an 8-bit count", () => {
    const { high, low } = encodeCompressedDescriptor(0x50000 + 100, 1000, 16)
    expect(high >>> 30).toBe(1)
    expect((high >>> (54 - 32)) & 0xff).toBe(Math.floor((0x50000 + 100 + 999) / 512) - Math.floor((0x50000 + 100) / 512))
    expect(decodeCompressedDescriptor(high, low, 16)).toEqual({ hostOffset: 0x50064, compressedSize: 3 * 512 - 100 })
  })
  it("encode/decode covers the bytes, for every cluster size (property)", () => {
    for (const cb of ALL_CLUSTER_BITS) {
      const x = 62 - (cb - 8)
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 2 ** Math.min(x, 53) - 1 }), fc.integer({ min: 1, max: maxCompressedSize(cb) }), (off, len) => {
          const { high, low } = encodeCompressedDescriptor(off, len, cb)
          const d = decodeCompressedDescriptor(high, low, cb)
          expect(d.hostOffset).toBe(off)
          expect(d.compressedSize).toBeGreaterThanOrEqual(len)
          expect(((off % 512) + d.compressedSize) % 512).toBe(0)
          expect(d.compressedSize - len).toBeLessThan(512)
        }),
        { numRuns: 200 }
      )
    }
  })
  it("rejects sizes and offsets that do not fit", () => {
    expect(fail(() => encodeCompressedDescriptor(0, maxCompressedSize(16) + 512, 16)).reason).toBe("DoesNotFit")
    expect(fail(() => encodeCompressedDescriptor(511, maxCompressedSize(16) + 1, 16)).reason).toBe("DoesNotFit")
    expect(fail(() => encodeCompressedDescriptor(2 ** 49, 100, 21)).reason).toBe("OffsetTooLarge")
    expect(fail(() => encodeCompressedDescriptor(0, 0, 16)).reason).toBe("InvalidField")
  })
})

describe("L2 entries", () => {
  it("standard entries round-trip for every cluster size (property)", () => {
    for (const cb of ALL_CLUSTER_BITS) {
      const g = makeGeometry(cb, false, 4)
      fc.assert(
        fc.property(standardEntry(g), fc.nat({ max: g.l2Entries - 1 }), (entry, index) => {
          const table = new Uint8Array(g.clusterSize)
          writeL2Entry(table, index, entry as Exclude<L2Entry, { _tag: "Invalid" }>, g)
          expect(readL2Entry(table, index, g)).toEqual(entry)
          expect(l2EntryHigh(table, index, g)).toBe(dv(table).getUint32(index * 8))
          expect(l2EntryLow(table, index, g)).toBe(dv(table).getUint32(index * 8 + 4))
        }),
        { numRuns: 150 }
      )
    }
  })
  it("extended entries round-trip for every cluster size >= 16 KiB (property)", () => {
    for (const cb of EXTENDED_CLUSTER_BITS) {
      const g = makeGeometry(cb, true, 4)
      fc.assert(
        fc.property(fc.oneof(subclusterEntry(g), compressedEntry(g)), fc.nat({ max: g.l2Entries - 1 }), (entry, index) => {
          const table = new Uint8Array(g.clusterSize)
          writeL2Entry(table, index, entry as Exclude<L2Entry, { _tag: "Invalid" }>, g)
          expect(readL2Entry(table, index, g)).toEqual(entry)
          expect(l2EntryLow(table, index, g)).toBe(dv(table).getUint32(index * 16 + 4))
        }),
        { numRuns: 150 }
      )
    }
  })
  it("Normal/Zero/Unallocated map to subcluster masks with extended L2", () => {
    const g = makeGeometry(16, true, 4)
    const t = new Uint8Array(64)
    writeL2Entry(t, 1, { _tag: "Normal", hostOffset: 0x50000, copied: true }, g)
    expect(readL2Entry(t, 1, g)).toEqual({ _tag: "Subclusters", hostOffset: 0x50000, copied: true, allocatedMask: 0xffffffff, zeroMask: 0 })
    writeL2Entry(t, 2, { _tag: "Zero", hostOffset: 0, copied: false }, g)
    expect(readL2Entry(t, 2, g)).toEqual({ _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: 0xffffffff })
    writeL2Entry(t, 1, { _tag: "Unallocated" }, g)
    expect(t.subarray(16, 32).every((b) => b === 0)).toBe(true)
    expect(fail(() => writeL2Entry(new Uint8Array(8), 0, { _tag: "Subclusters", hostOffset: 0, copied: true, allocatedMask: 1, zeroMask: 0 }, makeGeometry(16, false, 4))).reason).toBe("InvalidField")
    expect(fail(() => writeL2Entry(t, 0, { _tag: "Subclusters", hostOffset: 0x10000, copied: true, allocatedMask: 1, zeroMask: 1 }, g)).reason).toBe("InvalidField")
    expect(fail(() => writeL2Entry(t, 0, { _tag: "Normal", hostOffset: 0x10200, copied: true }, g)).reason).toBe("InvalidField")
  })
  it("hostile entries decode as Invalid", () => {
    const g = makeGeometry(16, false, 4)
    const gx = makeGeometry(16, true, 4)
    const one = (hi: number, lo: number, geometry = g): L2Entry => {
      const t = new Uint8Array(16)
      setWord(t, 0, hi, lo)
      return readL2Entry(t, 0, geometry)
    }
    const ext = (hi: number, lo: number, zero: number, alloc: number): L2Entry => {
      const t = new Uint8Array(16)
      setWord(t, 0, hi, lo)
      setWord(t, 8, zero, alloc)
      return readL2Entry(t, 0, gx)
    }
    const invalid = (e: L2Entry, damage: string, raw?: bigint) => {
      expect(e._tag).toBe("Invalid")
      if (e._tag === "Invalid") expect(e.damage).toBe(damage)
      if (raw !== undefined && e._tag === "Invalid") expect(e.raw).toBe(raw)
    }
    invalid(one(0x80000000, 0x50002), "ReservedBits", 0x8000000000050002n) // reserved bit 1
    invalid(one(0x81000000, 0x50000), "ReservedBits") // reserved bit 56
    invalid(one(0x80000000, 0x50200), "Unaligned") // unaligned
    invalid(one(0x81000000, 0x50200), "Unaligned") // unaligned wins over reserved bits (QEMU ignores those)
    invalid(one(0x80200000, 0), "OffsetTooLarge") // offset >= 2^53
    // COPIED or a bitmap on a compressed entry: QEMU's I/O ignores both (check reports them)
    expect(one(0xc0000000, 0x1234)._tag).toBe("Compressed")
    invalid(one(0x40000000 | 0x01000000, 0, makeGeometry(9, false, 4)), "OffsetTooLarge") // compressed offset bit 56 with x = 61
    invalid(ext(0x80000000, 0x50000, 1, 1), "SubclusterBitmap") // allocated and zero
    invalid(ext(0, 0, 0, 1), "SubclusterBitmap") // allocated without host cluster
    invalid(ext(0x80000000, 0x50200, 1, 1), "SubclusterBitmap") // QCOW2_SUBCLUSTER_INVALID before the alignment check
    expect(ext(0x40000000, 0x1234, 0, 1)._tag).toBe("Compressed")
    expect(one(0, 1)).toEqual({ _tag: "Zero", hostOffset: 0, copied: false })
    expect(one(0x80000000, 0)).toEqual({ _tag: "Normal", hostOffset: 0, copied: true })
    expect(one(0, 0)).toEqual({ _tag: "Unallocated" })
    // bit 0 is not used with extended L2 entries and is ignored, as QEMU does
    expect(ext(0x80000000, 0x50001, 0, 3)).toEqual({ _tag: "Subclusters", hostOffset: 0x50000, copied: true, allocatedMask: 3, zeroMask: 0 })
  })
  it("an entry that is only COPIED (host offset 0) is unallocated without an external data file, as in QEMU", () => {
    const g = makeGeometry(16, false, 4)
    const gx = makeGeometry(16, true, 4)
    const read = (hi: number, lo: number, dataFile: boolean | undefined, zero = 0, alloc = 0, geometry = g): L2Entry => {
      const t = new Uint8Array(16)
      setWord(t, 0, hi, lo)
      setWord(t, 8, zero, alloc)
      return readL2Entry(t, 0, geometry, dataFile)
    }
    // qcow2_get_cluster_type: offset 0 is a real offset only with a data file and COPIED set
    expect(read(0x80000000, 0, false)).toEqual({ _tag: "Unallocated" })
    expect(read(0x80000000, 0, true)).toEqual({ _tag: "Normal", hostOffset: 0, copied: true })
    expect(read(0x80000000, 0, undefined)).toEqual({ _tag: "Normal", hostOffset: 0, copied: true })
    expect(read(0, 0, true)).toEqual({ _tag: "Unallocated" })
    // the zero flag wins: QCOW2_CLUSTER_ZERO_PLAIN, no preallocated host cluster
    expect(read(0x80000000, 1, false)).toEqual({ _tag: "Zero", hostOffset: 0, copied: false })
    expect(read(0x80000000, 1, true)).toEqual({ _tag: "Zero", hostOffset: 0, copied: true })
    // a real offset is unaffected
    expect(read(0x80000000, 0x50000, false)).toEqual({ _tag: "Normal", hostOffset: 0x50000, copied: true })
    // extended L2: no host cluster, so allocated subclusters are QCOW2_SUBCLUSTER_INVALID and zero ones stay zero
    expect(read(0x80000000, 0, false, 0, 1, gx)._tag).toBe("Invalid")
    expect(read(0x80000000, 0, false, 0xffffffff, 0, gx)).toEqual({ _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: 0xffffffff })
    expect(read(0x80000000, 0, true, 0, 1, gx)).toEqual({ _tag: "Subclusters", hostOffset: 0, copied: true, allocatedMask: 1, zeroMask: 0 })
  })
})

/** Reads the L2 table mapping guest cluster 0 of an image written by qemu-io. */
const l2Of = (file: string) => {
  const bytes = readBytes(file)
  const { header } = decodeImageHeader(bytes)
  const g = makeGeometry(header.clusterBits, (header.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n, header.refcountOrder)
  const l1 = bytes.subarray(header.l1TableOffset, header.l1TableOffset + header.l1Size * 8)
  const { l2Offset, copied } = readL1Entry(l1, 0)
  expect(copied).toBe(true)
  return { bytes, g, l2: bytes.subarray(l2Offset, l2Offset + g.clusterSize) }
}

describe("tables written by qemu-io", () => {
  it("normal, zero and compressed clusters in a 64 KiB image", () => {
    qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "std.qcow2", "1M")
    qemuIo(tmp.dir, "std.qcow2", "write -P 0xaa 0 64k", "write -z 64k 64k", "write -c -P 0x55 128k 64k", "write -P 0x11 192k 64k", "write -z 192k 64k")
    const { bytes, g, l2 } = l2Of(tmp.path("std.qcow2"))
    const e0 = readL2Entry(l2, 0, g)
    expect(e0).toMatchObject({ _tag: "Normal", copied: true })
    if (e0._tag === "Normal") expect(bytes.subarray(e0.hostOffset, e0.hostOffset + 65536).every((b) => b === 0xaa)).toBe(true)
    expect(readL2Entry(l2, 1, g)).toEqual({ _tag: "Zero", hostOffset: 0, copied: false })
    const e2 = readL2Entry(l2, 2, g)
    expect(e2._tag).toBe("Compressed")
    if (e2._tag === "Compressed") {
      const out = inflateRawSync(bytes.subarray(e2.hostOffset, e2.hostOffset + e2.compressedSize))
      expect(out.length).toBe(65536)
      expect(out.every((b) => b === 0x55)).toBe(true)
    }
    // write -z over an allocated cluster keeps the preallocation
    expect(readL2Entry(l2, 3, g)).toMatchObject({ _tag: "Zero", copied: true })
    expect(readL2Entry(l2, 4, g)).toEqual({ _tag: "Unallocated" })
  })
  it("compressed clusters decode and inflate for cluster sizes 512 B .. 2 MiB", () => {
    for (const cb of [9, 12, 16, 21]) {
      const cs = 2 ** cb
      const name = `c${cb}.qcow2`
      qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, name, String(4 * cs))
      qemuIo(tmp.dir, name, `write -c -P 0x42 0 ${cs}`, `write -c -P 0x43 ${cs} ${cs}`)
      const { bytes, g, l2 } = l2Of(tmp.path(name))
      for (const [i, p] of [[0, 0x42], [1, 0x43]] as const) {
        const e = readL2Entry(l2, i, g)
        expect(e._tag).toBe("Compressed")
        if (e._tag !== "Compressed") continue
        expect(e.compressedSize).toBeLessThanOrEqual(maxCompressedSize(cb))
        const out = inflateRawSync(bytes.subarray(e.hostOffset, e.hostOffset + e.compressedSize))
        expect(out.length).toBe(cs)
        expect(out.every((b) => b === p)).toBe(true)
        // re-encoding the entry gives QEMU's bytes back
        const t = new Uint8Array(16)
        writeL2Entry(t, 0, e, g)
        expect(Array.from(t.subarray(0, 8))).toEqual(Array.from(l2.subarray(i * 8, i * 8 + 8)))
      }
    }
  })
  it("extended L2 subcluster bitmaps", () => {
    qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", "x.qcow2", "1M")
    qemuIo(tmp.dir, "x.qcow2", "write -P 0x11 0 4k", "write -P 0x22 12k 8k", "write -z 64k 4k", "write -c -P 0x33 128k 128k")
    const { bytes, g, l2 } = l2Of(tmp.path("x.qcow2"))
    expect(g.subclusterSize).toBe(4096)
    const e0 = readL2Entry(l2, 0, g)
    expect(e0).toMatchObject({ _tag: "Subclusters", copied: true, allocatedMask: 0b11001, zeroMask: 1 << 16 })
    if (e0._tag === "Subclusters") {
      expect(bytes.subarray(e0.hostOffset, e0.hostOffset + 4096).every((b) => b === 0x11)).toBe(true)
      expect(bytes.subarray(e0.hostOffset + 3 * 4096, e0.hostOffset + 5 * 4096).every((b) => b === 0x22)).toBe(true)
    }
    const e1 = readL2Entry(l2, 1, g)
    expect(e1._tag).toBe("Compressed")
    if (e1._tag === "Compressed") {
      expect(inflateRawSync(bytes.subarray(e1.hostOffset, e1.hostOffset + e1.compressedSize)).every((b) => b === 0x33)).toBe(true)
    }
    expect(readL2Entry(l2, 2, g)).toEqual({ _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: 0 })
  })
})
