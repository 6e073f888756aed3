import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  EntryBits,
  FormatError,
  hex64,
  hexAlt,
  makeGeometry,
  rawCompressedDescriptor,
  rawHostOffset,
  rawL1Entry,
  rawL2Entry,
  rawOffsetUnaligned,
  rawRefblockOffset,
  rawRefcount,
  rawRefcountTableEntry,
  rawSnapshotHeader,
  readL1Entry,
  readL2Entry,
  readRefcount,
  readRefcountTableEntry,
  readU16Lenient,
  readU32Lenient,
  decodeCompressedDescriptor,
  encodeSnapshotTable,
  writeRefcount
} from "../src/index.js"

const word = (hi: number, lo: number): Uint8Array => {
  const b = new Uint8Array(8)
  const v = new DataView(b.buffer)
  v.setUint32(0, hi >>> 0)
  v.setUint32(4, lo >>> 0)
  return b
}

const u32 = fc.integer({ min: 0, max: 0xffffffff })

describe("lenient raw accessors", () => {
  it("read zero past the end of the buffer instead of throwing", () => {
    const b = new Uint8Array([1, 2, 3, 4, 5, 6])
    expect(readU32Lenient(b, 0)).toBe(0x01020304)
    expect(readU32Lenient(b, 4)).toBe(0)
    expect(readU16Lenient(b, 4)).toBe(0x0506)
    expect(readU16Lenient(b, 5)).toBe(0)
    expect(rawL1Entry(b, 0)).toEqual({ hi: 0x01020304, lo: 0 })
    expect(rawL2Entry(new Uint8Array(0), 3, makeGeometry(16, true, 4))).toEqual({ hi: 0, lo: 0, zeroMask: 0, allocatedMask: 0 })
  })

  it("agree with readL1Entry and readRefcountTableEntry wherever those accept the entry", () => {
    fc.assert(
      fc.property(u32, u32, (hi, lo) => {
        const b = word(hi, lo)
        const raw = rawL1Entry(b, 0)
        expect(raw).toEqual({ hi, lo })
        try {
          const e = readL1Entry(b, 0)
          expect(rawHostOffset(raw.hi, raw.lo)).toBe(e.l2Offset)
          expect((raw.hi & EntryBits.Copied) !== 0).toBe(e.copied)
          expect((raw.hi & EntryBits.L1ReservedHigh) !== 0 || (raw.lo & EntryBits.ReservedLow9) !== 0).toBe(e.reservedBitsSet)
        } catch (err) {
          expect((err as FormatError).reason).toBe("OffsetTooLarge")
          expect(rawHostOffset(hi, lo)).toBeGreaterThanOrEqual(2 ** 53)
        }
        const r = rawRefcountTableEntry(b, 0)
        try {
          const e = readRefcountTableEntry(b, 0)
          expect(rawRefblockOffset(r.hi, r.lo)).toBe(e.offset)
        } catch (err) {
          expect((err as FormatError).reason).toBe("OffsetTooLarge")
          expect(rawRefblockOffset(r.hi, r.lo)).toBeGreaterThanOrEqual(2 ** 53)
        }
      })
    )
  })

  it("give the offset of entries readL2Entry calls Invalid, exactly in hex", () => {
    const g = makeGeometry(16, false, 4)
    const b = word(0x80ffffff, 0xfffffe00)
    const e = readL2Entry(b, 0, g)
    expect(e._tag).toBe("Invalid")
    const raw = rawL2Entry(b, 0, g)
    expect(hex64(raw.hi & EntryBits.OffsetHigh, raw.lo & EntryBits.OffsetLow)).toBe("fffffffffffe00")
    expect(rawHostOffset(raw.hi, raw.lo)).toBe(0xfffffffffffe00)
    expect(rawOffsetUnaligned(0x10200, 65536)).toBe(true)
    expect(rawOffsetUnaligned(0x10000, 65536)).toBe(false)
    expect(rawOffsetUnaligned(0x10001, 65536)).toBe(false)
  })

  it("print values as C's %#x does in QEMU's messages", () => {
    expect(hexAlt(0)).toBe("0")
    expect(hexAlt(0n)).toBe("0")
    expect(hexAlt(1)).toBe("0x1")
    expect(hexAlt(0x40000)).toBe("0x40000")
    expect(hexAlt(0x8000000000050200n)).toBe("0x8000000000050200")
  })

  it("decode compressed descriptors like decodeCompressedDescriptor, and beyond its range", () => {
    fc.assert(
      fc.property(fc.integer({ min: 9, max: 21 }), u32, u32, (bits, hi, lo) => {
        const raw = rawCompressedDescriptor(hi, lo, bits)
        try {
          const d = decodeCompressedDescriptor(hi, lo, bits)
          expect(raw.hostOffset).toBe(d.hostOffset)
          expect(raw.compressedSize).toBe(d.compressedSize)
        } catch {
          expect(raw.hostOffset).toBeGreaterThanOrEqual(2 ** 53)
        }
        expect(raw.offsetHigh * 2 ** 32 + raw.offsetLow).toBe(raw.hostOffset)
      })
    )
  })

  it("read refcounts of every width like readRefcount, 64-bit ones past 2^53 too", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 63 }), fc.double({ min: 0, max: 1, noNaN: true }), (order, index, f) => {
        const block = new Uint8Array(512)
        const value = Math.floor(f * (order === 6 ? 2 ** 53 - 1 : 2 ** (1 << order) - 1))
        writeRefcount(block, index, order, value)
        expect(rawRefcount(block, index, order)).toBe(readRefcount(block, index, order))
      })
    )
    const block = new Uint8Array(8).fill(0xff)
    expect(() => readRefcount(block, 0, 6)).toThrow(FormatError)
    expect(rawRefcount(block, 0, 6)).toBe(2 ** 64)
  })

  it("read the fixed part of a snapshot entry as encodeSnapshotTable wrote it", () => {
    const bytes = encodeSnapshotTable([
      {
        l1TableOffset: 0x50000,
        l1Size: 3,
        id: "1",
        name: "snap",
        dateSeconds: 0,
        dateNanoseconds: 0,
        vmClockNanoseconds: 0n,
        vmStateSize: 7,
        diskSize: 1 << 20,
        icount: -1n,
        extraData: new Uint8Array(24)
      }
    ])
    expect(rawSnapshotHeader(bytes, 0)).toEqual({ l1Offset: { hi: 0, lo: 0x50000 }, l1Size: 3, idSize: 1, nameSize: 4, vmStateSize32: 7, extraDataSize: 24 })
    expect(rawSnapshotHeader(bytes, bytes.length).l1Size).toBe(0)
  })
})
