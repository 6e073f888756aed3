import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { NodeClusterCodec, PortableClusterCodec, makeCompressionPool } from "../src/node.js"

describe("smoke", () => {
  it("round trips", async () => {
    const node = await Effect.runPromise(NodeClusterCodec.make)
    const portable = await Effect.runPromise(PortableClusterCodec.make)
    const data = new TextEncoder().encode("hello world ".repeat(10000)).subarray(0, 65536)
    for (const t of [0, 1] as const) {
      const c = node.compressSync(t, data)!
      const out = new Uint8Array(65536)
      portable.decompressSync(t, c, out)
      expect(out).toEqual(data)
    }
    const r = await Effect.runPromise(Effect.scoped(Effect.gen(function* () {
      const pool = yield* makeCompressionPool({ workers: 2 })
      return yield* Effect.forEach([0, 1, 0, 1] as const, (t) => pool.compress(t, data), { concurrency: 4 })
    })))
    expect(r.length).toBe(4)
    const out = new Uint8Array(65536)
    node.decompressSync(1, r[1]!, out)
    expect(out).toEqual(data)
  })
})
