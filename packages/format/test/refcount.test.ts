import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import {
  FormatError,
  decodeImageHeader,
  makeGeometry,
  maxRefcount,
  readRefcount,
  readRefcountTableEntry,
  writeRefcount,
  writeRefcountTableEntry
} from "../src/index.js"
import { qemuImg, qemuIo, readBytes, scratch } from "./qemu.js"

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

const ORDERS = [0, 1, 2, 3, 4, 5, 6]

describe("refcount entries", () => {
  it("maxRefcount", () => {
    expect(ORDERS.map(maxRefcount)).toEqual([1, 3, 15, 255, 65535, 4294967295, Number.MAX_SAFE_INTEGER])
    expect(fail(() => maxRefcount(7)).field).toBe("refcount_order")
  })

  it("round-trip for every order without touching neighbours (property)", () => {
    for (const order of ORDERS) {
      const g = makeGeometry(9, false, order)
      fc.assert(
        fc.property(
          fc.uint8Array({ minLength: 512, maxLength: 512 }),
          fc.nat({ max: g.refcountBlockEntries - 1 }),
          fc.integer({ min: 0, max: maxRefcount(order) }),
          (initial, index, value) => {
            const block = initial.slice()
            if (order === 6) {
              // keep 64-bit entries below 2^53
              for (let i = 0; i < 512; i += 8) {
                block[i] = 0
                block[i + 1] = block[i + 1]! & 0x1f
              }
            }
            const before = Array.from({ length: g.refcountBlockEntries }, (_, i) => readRefcount(block, i, order))
            writeRefcount(block, index, order, value)
            const after = Array.from({ length: g.refcountBlockEntries }, (_, i) => readRefcount(block, i, order))
            before[index] = value
            expect(after).toEqual(before)
          }
        ),
        { numRuns: 100 }
      )
    }
  })

  it("sub-byte entries are LSB-first, wider ones big-endian", () => {
    const b = new Uint8Array(8)
    writeRefcount(b, 0, 0, 1)
    writeRefcount(b, 3, 0, 1)
    expect(b[0]).toBe(0b1001)
    b.fill(0)
    writeRefcount(b, 1, 1, 3)
    expect(b[0]).toBe(0b1100)
    b.fill(0)
    writeRefcount(b, 1, 2, 0xa)
    expect(b[0]).toBe(0xa0)
    b.fill(0)
    writeRefcount(b, 1, 4, 0x1234)
    expect(Array.from(b.subarray(0, 4))).toEqual([0, 0, 0x12, 0x34])
    writeRefcount(b, 0, 6, 2 ** 40 + 5)
    expect(Array.from(b)).toEqual([0, 0, 1, 0, 0, 0, 0, 5])
  })

  it("rejects values that do not fit and 64-bit values above 2^53-1", () => {
    expect(fail(() => writeRefcount(new Uint8Array(1), 0, 0, 2)).reason).toBe("DoesNotFit")
    expect(fail(() => writeRefcount(new Uint8Array(2), 0, 4, 65536)).reason).toBe("DoesNotFit")
    expect(fail(() => writeRefcount(new Uint8Array(2), 0, 4, -1)).reason).toBe("DoesNotFit")
    const b = new Uint8Array(8).fill(0xff)
    expect(fail(() => readRefcount(b, 0, 6)).reason).toBe("OffsetTooLarge")
  })
})

describe("refcount table entries", () => {
  it("round-trip (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 44 - 1 }), fc.nat({ max: 63 }), (n, index) => {
        const t = new Uint8Array(512)
        writeRefcountTableEntry(t, index, n * 512)
        expect(readRefcountTableEntry(t, index)).toEqual({ offset: n * 512, reservedBitsSet: false })
      })
    )
  })
  it("reserved bits and huge offsets", () => {
    const t = new Uint8Array(8)
    t[7] = 1
    expect(readRefcountTableEntry(t, 0).reservedBitsSet).toBe(true)
    t.fill(0)
    t[0] = 0x01 // bit 56
    expect(fail(() => readRefcountTableEntry(t, 0)).reason).toBe("OffsetTooLarge")
    expect(fail(() => writeRefcountTableEntry(t, 0, 100)).reason).toBe("InvalidField")
  })
})

describe("refcount blocks written by QEMU", () => {
  it.each(ORDERS)("refcount_order %i", (order) => {
    const bits = 1 << order
    const name = `rc${bits}.qcow2`
    qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "-o", `refcount_bits=${bits}`, name, "1M")
    qemuIo(tmp.dir, name, "write -P 1 0 64k")
    if (order > 0) qemuImg(tmp.dir, "snapshot", "-c", "s1", name)
    const bytes = readBytes(tmp.path(name))
    const { header } = decodeImageHeader(bytes)
    expect(header.refcountOrder).toBe(order)
    const g = makeGeometry(header.clusterBits, false, order)
    const reftable = bytes.subarray(header.refcountTableOffset, header.refcountTableOffset + header.refcountTableClusters * g.clusterSize)
    const { offset, reservedBitsSet } = readRefcountTableEntry(reftable, 0)
    expect(reservedBitsSet).toBe(false)
    expect(offset).toBe(0x20000)
    const block = bytes.subarray(offset, offset + g.clusterSize)
    const clusters = Math.ceil(bytes.length / g.clusterSize)
    const counts = Array.from({ length: clusters + 2 }, (_, i) => readRefcount(block, i, order))
    // header, reftable, refblock, L1: one reference each; nothing past the end of the file
    expect(counts.slice(0, 4)).toEqual([1, 1, 1, 1])
    expect(counts.slice(clusters)).toEqual([0, 0])
    // the L2 table (0x40000) and the data cluster (0x50000) are shared with the snapshot
    expect(counts.slice(4, 6)).toEqual(order > 0 ? [2, 2] : [1, 1])
    const max = maxRefcount(order)
    expect(counts.every((c) => c >= 0 && c <= max)).toBe(true)
    // and writing them back reproduces QEMU's block
    const copy = new Uint8Array(g.clusterSize)
    counts.slice(0, clusters).forEach((c, i) => writeRefcount(copy, i, order, c))
    expect(Buffer.from(copy).equals(Buffer.from(block))).toBe(true)
  })
})
