import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { BitmapBits, anySet, bitSet, dirtyRanges, markRange, mergeBits, resizeBits } from "../src/bitmap-bits.js"

/** The naive model: bit i is dirty when [offset, offset + length) touches [i * g, (i + 1) * g). */
const touched = (i: number, g: number, offset: number, length: number): boolean => length > 0 && offset < (i + 1) * g && offset + length > i * g

const bytesFor = (size: number, g: number) => Math.ceil(Math.ceil(size / g) / 64) * 8

const granularity = fc.integer({ min: 9, max: 16 }).map((bits) => 2 ** bits)

describe("dirty bitmap bits", () => {
  it("markRange sets exactly the bits covering each written range", () => {
    fc.assert(
      fc.property(
        granularity,
        fc.array(fc.tuple(fc.nat(4 << 20), fc.nat(1 << 20)), { maxLength: 8 }),
        (g, writes) => {
          const size = 5 << 20
          const bits = new Uint8Array(bytesFor(size, g))
          for (const [offset, length] of writes) markRange(bits, g, offset, Math.min(length, size - offset))
          for (let i = 0; i < Math.ceil(size / g); i++) {
            const expected = writes.some(([offset, length]) => touched(i, g, offset, Math.min(length, size - offset)))
            if (bitSet(bits, i) !== expected) return false
          }
          // Nothing past the bits the image needs.
          for (let i = Math.ceil(size / g); i < bits.length * 8; i++) if (bitSet(bits, i)) return false
          return true
        }
      ),
      { numRuns: 200 }
    )
  })

  it("dirtyRanges lists the marked bytes, merged and clipped to the size", () => {
    fc.assert(
      fc.property(granularity, fc.array(fc.tuple(fc.nat(1 << 20), fc.integer({ min: 1, max: 200_000 })), { maxLength: 6 }), (g, writes) => {
        const size = (1 << 20) + 1000
        const bits = new Uint8Array(bytesFor(size, g))
        for (const [offset, length] of writes) markRange(bits, g, offset, Math.min(length, size - offset))
        const ranges = [...dirtyRanges(bits, g, size)]
        for (let k = 1; k < ranges.length; k++) expect(ranges[k]!.offset).toBeGreaterThan(ranges[k - 1]!.offset + ranges[k - 1]!.length)
        const covered = (i: number) => ranges.some((r) => r.offset <= i * g && i * g < r.offset + r.length)
        let wrong = 0
        for (let i = 0; i < Math.ceil(size / g); i++) if (covered(i) !== bitSet(bits, i)) wrong++
        expect(wrong).toBe(0)
        if (ranges.length > 0) expect(ranges[ranges.length - 1]!.offset + ranges[ranges.length - 1]!.length).toBeLessThanOrEqual(size)
      }),
      { numRuns: 100 }
    )
  })

  it("mergeBits at another granularity marks every byte the source has dirty, and no more than its bits cover", () => {
    fc.assert(
      fc.property(granularity, granularity, fc.array(fc.tuple(fc.nat(1 << 20), fc.integer({ min: 1, max: 100_000 })), { maxLength: 5 }), (gInto, gFrom, writes) => {
        const size = 1 << 20
        const from = new Uint8Array(bytesFor(size, gFrom))
        for (const [offset, length] of writes) markRange(from, gFrom, offset, Math.min(length, size - offset))
        const into = new Uint8Array(bytesFor(size, gInto))
        mergeBits(into, gInto, from, gFrom, size)
        // The result is what marking the source's dirty ranges directly gives.
        const expected = new Uint8Array(into.length)
        for (const r of dirtyRanges(from, gFrom, size)) markRange(expected, gInto, r.offset, r.length)
        expect(into).toEqual(expected)
      }),
      { numRuns: 100 }
    )
  })

  it("resizeBits keeps the bits inside the new size and clears everything past it", () => {
    fc.assert(
      fc.property(granularity, fc.nat(3 << 20), fc.array(fc.tuple(fc.nat(2 << 20), fc.nat(1 << 19)), { maxLength: 5 }), (g, newSize, writes) => {
        const size = 2 << 20
        const bits = new Uint8Array(bytesFor(size, g))
        for (const [offset, length] of writes) markRange(bits, g, offset, Math.min(length, size - offset))
        const out = resizeBits(bits, g, newSize, bytesFor(newSize, g))
        expect(out.length).toBe(bytesFor(newSize, g))
        const n = Math.ceil(newSize / g)
        let wrong = 0
        for (let i = 0; i < out.length * 8; i++) if (bitSet(out, i) !== (i < n && i < bits.length * 8 && bitSet(bits, i))) wrong++
        expect(wrong).toBe(0)
      }),
      { numRuns: 100 }
    )
  })

  it("BitmapBits knows which clusters of its data writes touched (a store reads only those)", () => {
    fc.assert(
      fc.property(granularity, fc.array(fc.tuple(fc.nat(8 << 20), fc.nat(1 << 20)), { maxLength: 6 }), fc.boolean(), (g, writes, clearFirst) => {
        const size = 9 << 20
        const cs = 512
        const data = new BitmapBits(new Uint8Array(bytesFor(size, g)), g, cs)
        data.mark(0, size)
        if (clearFirst) data.clear()
        for (const [offset, length] of writes) data.mark(offset, Math.min(length, size - offset))
        const plain = new Uint8Array(data.bits.length)
        if (!clearFirst) markRange(plain, g, 0, size)
        for (const [offset, length] of writes) markRange(plain, g, offset, Math.min(length, size - offset))
        expect(data.bits).toEqual(plain)
        for (let i = 0; i < data.chunks.length; i++) {
          const from = i * cs
          expect(data.clusterDirty(i)).toBe(anySet(plain, from, Math.min(plain.length, from + cs)))
        }
      }),
      { numRuns: 100 }
    )
  })
})
