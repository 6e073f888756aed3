import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { OutputMemory } from "../src/internal/outputMemory.js"

describe("OutputMemory", () => {
  it("serves a request from the smallest spare buffer that holds it", () => {
    const memory = new OutputMemory(8 << 20)
    const big = memory.take(2 << 20)
    const small = memory.take(300 << 10)
    expect(big.buffer.byteLength).toBe(2 << 20)
    expect(small.buffer.byteLength).toBe(512 << 10)
    memory.give(big)
    memory.give(small)
    const next = memory.take(200 << 10)
    expect(next.length).toBe(200 << 10)
    expect(next.buffer).toBe(small.buffer)
    expect(memory.take(1 << 20).buffer).toBe(big.buffer)
    // Nothing spare now: new memory.
    expect(memory.take(64 << 10).buffer).not.toBe(big.buffer)
  })

  it("never hands out memory that is taken, and keeps at most its limit spare (property)", () => {
    const step = fc.oneof(fc.record({ take: fc.integer({ min: 1, max: 3 << 20 }) }), fc.record({ give: fc.nat() }))
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
        const limit = 4 << 20
        const memory = new OutputMemory(limit)
        const taken: Array<Uint8Array> = []
        const spare = new Set<ArrayBufferLike>()
        for (const s of steps) {
          if ("take" in s) {
            const view = memory.take(s.take)
            expect(view.length).toBe(s.take)
            expect(taken.some((t) => t.buffer === view.buffer)).toBe(false)
            spare.delete(view.buffer)
            taken.push(view)
          } else if (taken.length > 0) {
            const [view] = taken.splice(s.give % taken.length, 1)
            memory.give(view!)
            spare.add(view!.buffer)
          }
        }
        // What take hands out next, without giving back, is spare memory or new memory, never taken memory.
        let kept = 0
        for (;;) {
          const view = memory.take(1)
          if (!spare.has(view.buffer)) break
          kept += view.buffer.byteLength
          spare.delete(view.buffer)
        }
        expect(kept).toBeLessThanOrEqual(limit)
      })
    )
  })
})
