import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import {
  BitmapFlag,
  FormatError,
  bitmapDataBytes,
  bitmapDirectorySize,
  bitmapTableEntries,
  defaultBitmapGranularity,
  persistentBitmapsSize,
  decodeBitmapDirectory,
  decodeImageHeader,
  encodeBitmapDirectory,
  readBitmapTableEntry,
  writeBitmapTableEntry,
  type BitmapDirectoryEntry
} from "../src/index.js"
import { qemuImg, qemuInfo, readBytes, scratch } from "./qemu.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

const fail = (f: () => unknown): FormatError => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError)
    return e as FormatError
  }
  throw new Error("expected a FormatError")
}

const bitmapEntry: fc.Arbitrary<BitmapDirectoryEntry> = fc.record({
  tableOffset: fc.integer({ min: 0, max: 2 ** 37 - 1 }).map((n) => n * 65536),
  tableSize: fc.nat({ max: 0xffffffff }),
  flags: fc.nat({ max: 0xffffffff }),
  type: fc.nat({ max: 255 }),
  granularityBits: fc.nat({ max: 63 }),
  name: fc.string({ unit: "grapheme", minLength: 1, maxLength: 100 }),
  extraData: fc.uint8Array({ maxLength: 30 })
})

describe("bitmap directory", () => {
  it("round-trip (property)", () => {
    fc.assert(
      fc.property(fc.array(bitmapEntry, { maxLength: 8 }), (entries) => {
        const bytes = encodeBitmapDirectory(entries)
        expect(bytes.length).toBe(bitmapDirectorySize(entries))
        expect(bytes.length % 8).toBe(0)
        expect(decodeBitmapDirectory(bytes, entries.length)).toEqual(entries)
      })
    )
  })

  it("hostile directories", () => {
    const e: BitmapDirectoryEntry = { tableOffset: 0x60000, tableSize: 1, flags: 2, type: 1, granularityBits: 16, name: "b", extraData: new Uint8Array(0) }
    const bytes = encodeBitmapDirectory([e])
    expect(fail(() => decodeBitmapDirectory(bytes, 2)).reason).toBe("Truncated")
    const extra = bytes.slice()
    new DataView(extra.buffer).setUint32(20, 0x7fffffff)
    expect(fail(() => decodeBitmapDirectory(extra, 1)).field).toBe("bitmap_extra_data")
    const name = bytes.slice()
    new DataView(name.buffer).setUint16(18, 100)
    expect(fail(() => decodeBitmapDirectory(name, 1)).field).toBe("bitmap_name")
    expect(fail(() => decodeBitmapDirectory(bytes, 65536)).reason).toBe("InvalidField")
    expect(fail(() => encodeBitmapDirectory([{ ...e, name: "" }])).field).toBe("bitmap_name")
    expect(fail(() => encodeBitmapDirectory([{ ...e, name: "x".repeat(1024) }])).field).toBe("bitmap_name")
  })

  it("bitmap table entries", () => {
    const t = new Uint8Array(24)
    writeBitmapTableEntry(t, 0, 0x70000, false)
    writeBitmapTableEntry(t, 1, 0, true)
    expect(readBitmapTableEntry(t, 0)).toEqual({ offset: 0x70000, allOnes: false, reservedBitsSet: false })
    expect(readBitmapTableEntry(t, 1)).toEqual({ offset: 0, allOnes: true, reservedBitsSet: false })
    expect(readBitmapTableEntry(t, 2)).toEqual({ offset: 0, allOnes: false, reservedBitsSet: false })
    t[7] = 1 // bit 0 together with an offset
    expect(readBitmapTableEntry(t, 0).reservedBitsSet).toBe(true)
    expect(fail(() => writeBitmapTableEntry(t, 0, 0x70000, true)).reason).toBe("InvalidField")
  })

  it("reads directories written by qemu-img bitmap and re-encodes them byte for byte", () => {
    qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "b.qcow2", "100M")
    qemuImg(tmp.dir, "bitmap", "--add", "-g", "65536", "b.qcow2", "first")
    qemuImg(tmp.dir, "bitmap", "--add", "--disable", "-g", "512", "b.qcow2", "a longer bitmap name")
    const bytes = readBytes(tmp.path("b.qcow2"))
    const { extensions } = decodeImageHeader(bytes)
    const ext = extensions.bitmaps!
    expect(ext.nbBitmaps).toBe(2)
    const raw = bytes.subarray(ext.directoryOffset, ext.directoryOffset + ext.directorySize)
    const dir = decodeBitmapDirectory(raw, ext.nbBitmaps)
    const info = qemuInfo(tmp.dir, "b.qcow2")["format-specific"].data.bitmaps as any[]
    expect(dir.map((d) => [d.name, 2 ** d.granularityBits, (d.flags & BitmapFlag.Auto) !== 0])).toEqual(
      info.map((i) => [i.name, i.granularity, i.flags.includes("auto")])
    )
    for (const d of dir) {
      expect(d.type).toBe(1)
      expect(d.extraData.length).toBe(0)
      const bitmapBytes = Math.ceil(100 * 1024 * 1024 / 2 ** d.granularityBits / 8)
      expect(d.tableSize).toBe(Math.ceil(bitmapBytes / 65536))
      for (let i = 0; i < d.tableSize; i++) {
        expect(readBitmapTableEntry(bytes.subarray(d.tableOffset), i)).toEqual({ offset: 0, allOnes: false, reservedBitsSet: false })
      }
    }
    expect(bitmapDirectorySize(dir)).toBe(ext.directorySize)
    expect(Buffer.from(encodeBitmapDirectory(dir)).equals(Buffer.from(raw))).toBe(true)
  })
})

describe("bitmap sizes", () => {
  const T = 2 * 1024 ** 4
  it("persistentBitmapsSize gives qemu-img measure's 'bitmaps size' (iotest 190's expected numbers)", () => {
    const bitmaps = [
      { name: "b1", granularity: 512, size: T },
      { name: "b2", granularity: 2 * 1024 * 1024, size: T }
    ]
    expect(persistentBitmapsSize(bitmaps, 65536)).toBe(537198592)
    expect(persistentBitmapsSize(bitmaps, 2 * 1024 * 1024)).toBe(545259520)
    expect(persistentBitmapsSize([], 65536)).toBe(0)
  })

  it("data bytes, table entries and default granularity as QEMU serialises them", () => {
    expect(bitmapDataBytes(10 * 1024 * 1024, 16)).toBe(24) // 160 bits, three 64-bit words
    expect(bitmapDataBytes(1, 9)).toBe(8)
    expect(bitmapTableEntries(T, 9, 65536)).toBe(8192)
    expect(bitmapTableEntries(10 * 1024 * 1024, 16, 65536)).toBe(1)
    expect([512, 4096, 65536, 2 * 1024 * 1024].map(defaultBitmapGranularity)).toEqual([4096, 4096, 65536, 65536])
  })
})
