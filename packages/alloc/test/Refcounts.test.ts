import { Effect } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { TableCache } from "@qcow2/cache"
import { OverlapIndex, readRefcountTableEntry, writeRefcount, writeRefcountTableEntry } from "@qcow2/format"
import { makeMemoryStorage } from "@qcow2/storage"
import type { BlockStorageShape } from "@qcow2/storage"
import { Refcounts } from "../src/index.js"

const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect as Effect.Effect<A>)

/** A fresh image layout: header (cluster 0), refcount table (1), one refcount block (2), all counted. */
async function fresh(clusterBits: number, refcountOrder: number, setup: { lazy?: boolean; edit?: (table: Uint8Array, block: Uint8Array) => void } = {}) {
  const cs = 2 ** clusterBits
  const storage = makeMemoryStorage()
  const table = new Uint8Array(cs)
  writeRefcountTableEntry(table, 0, 2 * cs)
  const block = new Uint8Array(cs)
  for (let c = 0; c < 3; c++) writeRefcount(block, c, refcountOrder, 1)
  setup.edit?.(table, block)
  await run(storage.write(0, new Uint8Array(cs)))
  await run(storage.write(cs, table))
  await run(storage.write(2 * cs, block))
  let location = { offset: cs, clusters: 1 }
  const mappingCache = new TableCache({ name: "L2", tableSize: cs, capacityBytes: 4 * cs, storage })
  const make = (s: BlockStorageShape) =>
    new Refcounts({
      storage: s,
      clusterBits,
      refcountOrder,
      table: location,
      tableBytes: table.slice(),
      blockCache: new TableCache({ name: "refcount block", tableSize: cs, capacityBytes: 4 * cs, storage: s }),
      mappingCache,
      fileSize: 3 * cs,
      header: {
        moveRefcountTable: (next) =>
          Effect.sync(() => {
            location = next
          })
      },
      lazy: setup.lazy ?? false,
      overlaps: new OverlapIndex(cs)
    })
  return { storage, refcounts: make(storage), cs, location: () => location, mappingCache }
}

/**
 * Twin refcount states (one driven through a plain-code path, one through
 * the Effect path) agree: where the counted clusters end, where the next
 * cluster goes, and every byte written once both caches are flushed.
 */
async function expectSameState(fast: Awaited<ReturnType<typeof fresh>>, slow: Awaited<ReturnType<typeof fresh>>): Promise<void> {
  expect(await run(fast.refcounts.usedEnd())).toBe(await run(slow.refcounts.usedEnd()))
  expect(await run(fast.refcounts.allocate(1))).toBe(await run(slow.refcounts.allocate(1)))
  for (const side of [fast, slow]) {
    await run(side.mappingCache.flush())
    await run(side.refcounts.cache.flush())
  }
  const fastBytes = await run(fast.storage.size())
  expect(fastBytes).toBe(await run(slow.storage.size()))
  const a = new Uint8Array(fastBytes)
  const b = new Uint8Array(fastBytes)
  await run(fast.storage.read(0, a))
  await run(slow.storage.read(0, b))
  expect(Buffer.compare(a, b)).toBe(0)
}

describe("Refcounts", () => {
  it("allocates contiguous runs after the metadata and counts them", async () => {
    const { refcounts, cs } = await fresh(16, 4)
    const a = await run(refcounts.allocate(3))
    const b = await run(refcounts.allocate(1))
    expect(a).toBe(3 * cs)
    expect(b).toBe(6 * cs)
    for (let c = 0; c < 7; c++) expect(await run(refcounts.get(c))).toBe(1)
    expect(await run(refcounts.get(7))).toBe(0)
  })

  it("reuses freed clusters from the free-space hint", async () => {
    const { refcounts, cs } = await fresh(16, 4)
    await run(refcounts.allocate(10))
    await run(refcounts.free(5 * cs, 2 * cs))
    expect(await run(refcounts.allocate(2))).toBe(5 * cs)
    expect(await run(refcounts.allocate(1))).toBe(13 * cs)
  })

  it("hands over for discarding the clusters a passing free leaves unreferenced, joined into runs, once", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const at = await run(refcounts.allocate(4))
    await run(refcounts.reference(at + 3 * cs, cs))
    await run(refcounts.free(at, 4 * cs, true))
    await run(refcounts.free(at + 3 * cs, cs))
    // The fourth cluster was shared: still referenced by one. A free without passing discards hands nothing over.
    expect(refcounts.takeDiscards()).toEqual([{ offset: at, length: 3 * cs }])
    expect(refcounts.takeDiscards()).toEqual([])
  })

  it("does not hand over a freed cluster once it was handed out again", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const at = await run(refcounts.allocate(1))
    await run(refcounts.free(at, cs, true))
    // Reusing it makes the frees durable first and forgets them.
    expect(await run(refcounts.allocate(1))).toBe(at)
    expect(refcounts.takeDiscards()).toEqual([])
  })

  it("reports overflow instead of wrapping (refcount_bits=1)", async () => {
    const { refcounts, cs } = await fresh(12, 0)
    const at = await run(refcounts.allocate(1))
    const error = await Effect.runPromise(Effect.flip(refcounts.reference(at, cs)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "Overflow" })
    expect(await run(refcounts.get(at / cs))).toBe(1)
  })

  it("reports a decrease below zero as Underflow (QEMU's EINVAL, not a corruption event)", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const error = await Effect.runPromise(Effect.flip(refcounts.free(20 * cs, cs)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "Underflow" })
  })

  it("changes a range whole or not at all: a decrease below zero in its last cluster leaves the others counted", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const at = await run(refcounts.allocate(2))
    const error = await Effect.runPromise(Effect.flip(refcounts.free(at, 3 * cs)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "Underflow", offset: at + 2 * cs })
    expect([await run(refcounts.get(at / cs)), await run(refcounts.get(at / cs + 1))]).toEqual([1, 1])
  })

  it("packs compressed data at byte granularity, one reference per touched cluster", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const a = await run(refcounts.allocateBytes(1000))
    const b = await run(refcounts.allocateBytes(1000))
    const c = await run(refcounts.allocateBytes(3000))
    expect(b).toBe(a + 1000)
    expect(c).toBe(b + 1000)
    expect(await run(refcounts.get(a / cs))).toBe(3)
    expect(await run(refcounts.get(a / cs + 1))).toBe(1)
  })

  it("allocateBytesNow gives what allocateBytes gives, or nothing and leaves the state alone (property)", async () => {
    const step = fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant("bytes" as const), size: fc.integer({ min: 1, max: 4095 }) }), weight: 12 },
      { arbitrary: fc.record({ kind: fc.constant("clusters" as const), size: fc.integer({ min: 1, max: 3 }) }), weight: 1 },
      { arbitrary: fc.record({ kind: fc.constant("free" as const), size: fc.integer({ min: 0, max: 400 }) }), weight: 1 }
    )
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(9, 12), fc.constantFrom(0, 3, 4, 6), fc.boolean(), fc.array(step, { minLength: 1, maxLength: 120 }), async (clusterBits, refcountOrder, lazy, steps) => {
        const fast = await fresh(clusterBits, refcountOrder, { lazy })
        const slow = await fresh(clusterBits, refcountOrder, { lazy })
        const cs = fast.cs
        const allocated: Array<number> = []
        for (const s of steps) {
          if (s.kind === "bytes") {
            const size = 1 + (s.size % (cs - 1))
            const a = fast.refcounts.allocateBytesNow(size) ?? (await run(fast.refcounts.allocateBytes(size)))
            const b = await run(slow.refcounts.allocateBytes(size))
            expect(a).toBe(b)
            allocated.push(a)
          } else if (s.kind === "clusters") {
            expect(await run(fast.refcounts.allocate(s.size))).toBe(await run(slow.refcounts.allocate(s.size)))
          } else if (allocated.length > 0) {
            // Dropping a compressed cluster's reference frees its host cluster once nothing else packs into it.
            const at = allocated.splice(s.size % allocated.length, 1)[0]!
            await run(fast.refcounts.free(at, 1))
            await run(slow.refcounts.free(at, 1))
          }
        }
        await expectSameState(fast, slow)
      }),
      { numRuns: 60 }
    )
  })

  it("allocateBytesNow packs after the previous compressed cluster, spilling into the next cluster, without an Effect", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    const a = await run(refcounts.allocateBytes(1000))
    expect(refcounts.allocateBytesNow(1000)).toBe(a + 1000)
    // 2000 bytes used of the host cluster; 3000 more spill into the next one.
    expect(refcounts.allocateBytesNow(3000)).toBe(a + 2000)
    expect(refcounts.allocateBytesNow(100)).toBe(a + 5000)
    expect(await run(refcounts.get(a / cs))).toBe(3)
    expect(await run(refcounts.get(a / cs + 1))).toBe(2)
    // A size of a whole cluster or more is never packed here.
    expect(refcounts.allocateBytesNow(cs)).toBeUndefined()
  })

  it("allocateNow and allocateAtNow give what allocate and allocateAt give, or nothing and leave the state alone (property)", async () => {
    const step = fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant("allocate" as const), count: fc.integer({ min: 1, max: 40 }) }), weight: 6 },
      { arbitrary: fc.record({ kind: fc.constant("at" as const), count: fc.integer({ min: 1, max: 40 }), back: fc.integer({ min: -3, max: 60 }) }), weight: 6 },
      { arbitrary: fc.record({ kind: fc.constant("free" as const), pick: fc.nat(), count: fc.integer({ min: 1, max: 20 }) }), weight: 2 },
      { arbitrary: fc.record({ kind: fc.constant("flush" as const) }), weight: 1 }
    )
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(9, 12), fc.constantFrom(0, 3, 4, 6), fc.boolean(), fc.array(step, { minLength: 1, maxLength: 80 }), async (clusterBits, refcountOrder, lazy, steps) => {
        const fast = await fresh(clusterBits, refcountOrder, { lazy })
        const slow = await fresh(clusterBits, refcountOrder, { lazy })
        const cs = fast.cs
        const allocated: Array<number> = []
        for (const s of steps) {
          if (s.kind === "allocate") {
            const a = fast.refcounts.allocateNow(s.count) ?? (await run(fast.refcounts.allocate(s.count)))
            expect(a).toBe(await run(slow.refcounts.allocate(s.count)))
            for (let i = 0; i < s.count; i++) allocated.push(a / cs + i)
          } else if (s.kind === "at") {
            // Right after the last allocation (a write going on), or somewhere before or past it.
            const first = (allocated.at(-1) ?? 0) + 1 - s.back
            const a = fast.refcounts.allocateAtNow(first, s.count) ?? (await run(fast.refcounts.allocateAt(first, s.count)))
            expect(a).toBe(await run(slow.refcounts.allocateAt(first, s.count)))
            for (let i = 0; i < a; i++) allocated.push(first + i)
          } else if (s.kind === "free" && allocated.length > 0) {
            const taken = allocated.splice(s.pick % allocated.length, s.count)
            for (const cluster of taken) {
              await run(fast.refcounts.free(cluster * cs, cs))
              await run(slow.refcounts.free(cluster * cs, cs))
            }
          } else if (s.kind === "flush") {
            for (const side of [fast, slow]) await run(side.mappingCache.flush())
          }
        }
        await expectSameState(fast, slow)
      }),
      { numRuns: 80 }
    )
  })

  it("allocateNow and allocateAtNow allocate from cached refcount blocks without an Effect", async () => {
    const { refcounts, cs } = await fresh(12, 4)
    // The first allocation loads the refcount block; later ones find it cached.
    const a = await run(refcounts.allocate(2))
    expect(refcounts.allocateNow(3)).toBe(a + 2 * cs)
    expect(refcounts.allocateAtNow(a / cs + 5, 4)).toBe(4)
    expect(refcounts.allocateNow(1)).toBe(a + 9 * cs)
    for (let c = a / cs; c < a / cs + 10; c++) expect(await run(refcounts.get(c))).toBe(1)
    // 64-bit refcounts are not plain numbers: always the Effect path.
    const wide = await fresh(12, 6)
    await run(wide.refcounts.allocate(1))
    expect(wide.refcounts.allocateNow(1)).toBeUndefined()
  })

  for (const [clusterBits, refcountOrder] of [[9, 4], [9, 6], [10, 0], [12, 6]] as const) {
    it(`creates self-describing refcount blocks and grows the table (cluster_bits=${clusterBits}, refcount_order=${refcountOrder})`, async () => {
      const { refcounts, storage, cs, location } = await fresh(clusterBits, refcountOrder)
      const blockEntries = (cs * 8) / 2 ** refcountOrder
      const tableEntries = cs / 8
      // Enough clusters to need more refcount blocks than one table cluster names.
      const wanted = Math.min(blockEntries * (tableEntries + 3), 40_000)
      const result = await run(
        Effect.gen(function* () {
          const allocated: number[] = []
          let total = 0
          while (total < wanted) {
            const n = Math.min(997, wanted - total)
            const at = (yield* refcounts.allocate(n)) / cs
            for (let i = 0; i < n; i++) allocated.push(at + i)
            total += n
          }
          yield* refcounts.cache.flush()
          const expected = new Set<number>([0, ...allocated])
          const loc = location()
          for (let c = 0; c < loc.clusters; c++) expected.add(loc.offset / cs + c)
          for (const o of refcounts.refcountBlockOffsets) if (o !== 0) expected.add(o / cs)
          const wrong: number[] = []
          for (let c = 0; c < refcounts.endOfAllocatedClusters; c++) {
            const refcount = yield* refcounts.get(c)
            if (refcount !== (expected.has(c) ? 1 : 0)) wrong.push(c)
          }
          const tableBytes = new Uint8Array(loc.clusters * cs)
          yield* storage.read(loc.offset, tableBytes)
          return { wrong, allocated: allocated.length, distinct: new Set(allocated).size, tableBytes, moved: loc.offset !== cs }
        })
      )
      expect(result.distinct).toBe(result.allocated)
      expect(result.wrong).toEqual([])
      if (blockEntries * (tableEntries + 3) <= 40_000) expect(result.moved).toBe(true)
      for (let i = 0; i < refcounts.refcountBlockOffsets.length; i++) {
        expect(readRefcountTableEntry(result.tableBytes, i).offset).toBe(refcounts.refcountBlockOffsets[i])
      }
    })
  }

  it("random allocate/free sequences keep refcounts equal to a model", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.record({ op: fc.constant("alloc" as const), n: fc.integer({ min: 1, max: 40 }) }), fc.record({ op: fc.constant("free" as const), pick: fc.nat() })), { maxLength: 60 }),
        async (ops) => {
          const { refcounts, cs } = await fresh(10, 1)
          const owned: number[] = []
          const model = new Map<number, number>([[0, 1], [1, 1], [2, 1]])
          for (const o of ops) {
            if (o.op === "alloc") {
              const at = (await run(refcounts.allocate(o.n))) / cs
              for (let i = 0; i < o.n; i++) {
                expect(model.get(at + i) ?? 0).toBe(0)
                model.set(at + i, 1)
                owned.push(at + i)
              }
            } else if (owned.length > 0) {
              const [c] = owned.splice(o.pick % owned.length, 1)
              await run(refcounts.free(c * cs, cs))
              model.set(c, 0)
            }
          }
          for (const [c, v] of model) expect(await run(refcounts.get(c))).toBe(v)
        }
      ),
      { numRuns: 60 }
    )
  })

  it("reports an unaligned refcount block offset as QEMU does, when the block is used", async () => {
    const { refcounts } = await fresh(16, 4, { edit: (table) => writeRefcountTableEntry(table, 1, 0x20600) })
    const blockEntries = 32768
    expect(await run(refcounts.get(5))).toBe(0)
    const error = await Effect.runPromise(Effect.flip(refcounts.get(blockEntries + 1)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "Corrupt" })
    expect(error.message).toBe("Refblock offset 0x20600 unaligned (reftable index: 0x1)")
  })

  it("a refcount table entry past 2^53 fails when used, not a crash at load: unreadable (EIO) when aligned, corruption when not", async () => {
    const { refcounts } = await fresh(16, 4, { edit: (table) => table.set([0x00, 0x40, 0, 0, 0, 0, 0, 0], 8) })
    const error = await Effect.runPromise(Effect.flip(refcounts.get(32768 + 1)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "NoSpace", errno: "EIO" })
    expect(await run(refcounts.allocate(1))).toBe(3 * 65536)
    const unaligned = await fresh(16, 4, { edit: (table) => table.set([0x00, 0x40, 0, 0, 0, 0, 0x02, 0], 8) })
    const damage = await Effect.runPromise(Effect.flip(unaligned.refcounts.get(32768 + 1)))
    expect(damage).toMatchObject({ _tag: "RefcountError", reason: "Corrupt", message: "Refblock offset 0x40000000000200 unaligned (reftable index: 0x1)" })
  })

  it("never hands out clusters counted past the end of the file (crash leftovers)", async () => {
    const { refcounts, cs } = await fresh(16, 4, { edit: (_t, block) => [3, 4].forEach((c) => writeRefcount(block, c, 4, 1)) })
    expect(await run(refcounts.allocate(1))).toBe(5 * cs)
    expect(await run(refcounts.allocate(2))).toBe(6 * cs)
  })

  it("countReferenced counts the clusters get() finds referenced, every refcount width, up to the limit", async () => {
    for (const order of [0, 3, 4, 6]) {
      // Clusters 0-2 are the metadata; 5, 9 and 4000 hold data; 7 a refcount of 2 (shared) where it fits.
      const { refcounts } = await fresh(12, order, { edit: (_t, block) => [5, 7, 9, 4000].forEach((c) => writeRefcount(block, c, order, c === 7 && order > 0 ? 2 : 1)) })
      const entries = 2 ** (12 + 3 - order)
      let byGet = 0
      for (let c = 0; c < entries + 10; c++) if ((await run(refcounts.get(c))) > 0) byGet++
      expect(await run(refcounts.countReferenced(entries + 10, Infinity))).toBe(byGet)
      expect(await run(refcounts.countReferenced(8, Infinity))).toBe(5)
      expect(await run(refcounts.countReferenced(entries + 10, 4))).toBe(4)
    }
  })

  it("countReferenced fails on an unusable refcount table entry as get() does", async () => {
    const { refcounts } = await fresh(16, 4, { edit: (table) => writeRefcountTableEntry(table, 1, 0x20600) })
    expect(await run(refcounts.countReferenced(32768, Infinity))).toBe(3)
    const error = await Effect.runPromise(Effect.flip(refcounts.countReferenced(32768 + 2, Infinity)))
    expect(error).toMatchObject({ _tag: "RefcountError", reason: "Corrupt" })
  })

  for (const lazy of [false, true]) {
    it(`does not reuse a freed cluster before the mapping tables that dropped it are durable (lazy=${lazy})`, async () => {
      const { refcounts, cs, mappingCache } = await fresh(16, 4, { lazy })
      const a = await run(refcounts.allocate(1))
      await run(mappingCache.flush())
      await run(refcounts.cache.flush())
      // An L2 change that drops the reference, still only in the cache.
      ;(await run(mappingCache.getEmpty(40 * cs)))[0] = 1
      await run(refcounts.free(a, cs))
      expect(mappingCache.hasDirty).toBe(true)
      expect(await run(refcounts.allocate(1))).toBe(a)
      expect(mappingCache.hasDirty).toBe(false)
    })
  }

  it("puts a new refcount block right after the run that needed it, and the run where it was found (QEMU's placement)", async () => {
    // 512-byte clusters, 16-bit refcounts: 256 clusters per block; clusters 0-2 are the metadata.
    const { refcounts, cs } = await fresh(9, 4)
    expect(await run(refcounts.allocate(253))).toBe(3 * cs)
    expect(await run(refcounts.allocate(2))).toBe(256 * cs)
    expect(refcounts.refcountBlockOffsets[1]).toBe(258 * cs)
    expect(await run(refcounts.get(258))).toBe(1)
    expect(await run(refcounts.allocate(1))).toBe(259 * cs)
  })

  it("moves the free-cluster index past a hole too small for a run, as QEMU does", async () => {
    const { refcounts, cs } = await fresh(16, 4)
    await run(refcounts.allocate(4))
    await run(refcounts.free(4 * cs, cs))
    expect(await run(refcounts.allocate(2))).toBe(7 * cs)
    // The hole at cluster 4 comes back only once something below the index is freed.
    expect(await run(refcounts.allocate(1))).toBe(9 * cs)
    await run(refcounts.free(8 * cs, cs))
    expect(await run(refcounts.allocate(1))).toBe(8 * cs)
    await run(refcounts.free(3 * cs, cs))
    expect(await run(refcounts.allocate(1))).toBe(3 * cs)
    expect(await run(refcounts.allocate(1))).toBe(4 * cs)
  })
})
