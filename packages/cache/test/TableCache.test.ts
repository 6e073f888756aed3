import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { BlockStorageShape } from "@qcow2/storage"
import { OverlapIndex } from "@qcow2/format"
import { MetadataOverlapError, TableCache } from "../src/index.js"

type Op = { kind: "write"; offset: number; first: number } | { kind: "flush" }

function recordingStorage() {
  const bytes = new Map<number, Uint8Array>()
  const ops: Op[] = []
  const storage: BlockStorageShape = {
    location: "test",
    capabilities: { readOnly: false, discard: false, alignment: 1 },
    read: (offset, into) =>
      Effect.sync(() => {
        const stored = bytes.get(offset)
        into.fill(0)
        if (stored) into.set(stored.subarray(0, into.length))
      }),
    write: (offset, data) =>
      Effect.sync(() => {
        bytes.set(offset, data.slice())
        ops.push({ kind: "write", offset, first: data[0] })
      }),
    flush: () => Effect.sync(() => void ops.push({ kind: "flush" })),
    size: () => Effect.succeed(0),
    resize: () => Effect.void,
    discard: () => Effect.void
  }
  return { storage, ops, bytes }
}

const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect as Effect.Effect<A>)

describe("TableCache", () => {
  it("serves hits synchronously and reads misses from storage", async () => {
    const { storage, bytes } = recordingStorage()
    bytes.set(4096, new Uint8Array(512).fill(7))
    const cache = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 4 * 512, storage })
    expect(cache.lookup(4096)).toBeUndefined()
    const table = await run(cache.get(4096))
    expect(table[0]).toBe(7)
    expect(cache.lookup(4096)).toBe(table)
    expect(cache.stats).toMatchObject({ hits: 1, misses: 1 })
  })

  it("writes dirty tables back when they are evicted, least recently used first", async () => {
    const { storage, ops, bytes } = recordingStorage()
    const cache = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 2 * 512, storage })
    const a = await run(cache.getEmpty(0))
    a[0] = 1
    const b = await run(cache.getEmpty(512))
    b[0] = 2
    cache.lookup(0) // 512 is now least recently used
    await run(cache.get(1024))
    expect(ops).toEqual([{ kind: "write", offset: 512, first: 2 }])
    expect(cache.lookup(512)).toBeUndefined()
    expect(cache.lookup(0)).toBe(a)
    await run(cache.flush())
    expect(bytes.get(0)?.[0]).toBe(1)
  })

  it("writes the tables it depends on, then a flush barrier, before its own (rule 1)", async () => {
    const { storage, ops } = recordingStorage()
    const refcounts = new TableCache({ name: "refcount", tableSize: 512, capacityBytes: 8 * 512, storage })
    const l2 = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage })
    const block = await run(refcounts.getEmpty(8192))
    block[0] = 9
    await run(l2.dependOn(refcounts))
    const table = await run(l2.getEmpty(4096))
    table[0] = 5
    await run(l2.flush())
    expect(ops).toEqual([
      { kind: "write", offset: 8192, first: 9 },
      { kind: "flush" },
      { kind: "write", offset: 4096, first: 5 },
      { kind: "flush" }
    ])
  })

  it("resolves an opposite dependency by flushing instead of forming a cycle", async () => {
    const { storage, ops } = recordingStorage()
    const refcounts = new TableCache({ name: "refcount", tableSize: 512, capacityBytes: 8 * 512, storage })
    const l2 = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage })
    ;(await run(l2.getEmpty(4096)))[0] = 1
    await run(refcounts.dependOn(l2)) // a free: L2 first, then refcounts
    ;(await run(refcounts.getEmpty(8192)))[0] = 2
    await run(l2.dependOn(refcounts)) // an allocation: must settle the free first
    expect(ops.slice(0, 3)).toEqual([
      { kind: "write", offset: 4096, first: 1 },
      { kind: "flush" },
      { kind: "write", offset: 8192, first: 2 }
    ])
    ;(await run(l2.get(4096)))[0] = 3
    l2.markDirty(4096)
    await run(l2.flush())
    expect(ops.at(-2)).toEqual({ kind: "write", offset: 4096, first: 3 })
  })

  it("declares a dependency without an Effect only where dependOn would need no flush", async () => {
    const { storage, ops } = recordingStorage()
    const refcounts = new TableCache({ name: "refcount", tableSize: 512, capacityBytes: 8 * 512, storage })
    const l2 = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage })
    expect(l2.canDependNow(l2)).toBe(false)
    expect(l2.canDependNow(refcounts)).toBe(true)
    l2.dependOnNow(refcounts)
    expect(l2.waitsFor(refcounts)).toBe(true)
    expect(l2.canDependNow(refcounts)).toBe(true)
    // The opposite direction needs the L2 cache flushed first (dependOn's cycle rule).
    expect(refcounts.canDependNow(l2)).toBe(false)
    expect(() => refcounts.dependOnNow(l2)).toThrow(/without a flush/)
    expect(refcounts.waitsFor(l2)).toBe(false)
    ;(await run(refcounts.getEmpty(8192)))[0] = 4
    ;(await run(l2.getEmpty(4096)))[0] = 6
    await run(l2.flush())
    expect(ops).toEqual([
      { kind: "write", offset: 8192, first: 4 },
      { kind: "flush" },
      { kind: "write", offset: 4096, first: 6 },
      { kind: "flush" }
    ])
    // Once flushed, neither waits: the other direction can be declared now.
    expect(refcounts.canDependNow(l2)).toBe(true)
  })

  it("puts a storage flush before the next write-back when asked (rule 2)", async () => {
    const { storage, ops } = recordingStorage()
    const l2 = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage })
    ;(await run(l2.getEmpty(0)))[0] = 1
    l2.dependOnStorageFlush()
    await run(l2.flushTables())
    expect(ops).toEqual([{ kind: "flush" }, { kind: "write", offset: 0, first: 1 }])
  })

  it("keeps a table dirty when its write fails", async () => {
    const { storage } = recordingStorage()
    let fail = true
    const failing: BlockStorageShape = {
      ...storage,
      write: (offset, data) => (fail ? Effect.fail({ _tag: "StorageError" } as never) : storage.write(offset, data))
    }
    const cache = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage: failing })
    ;(await run(cache.getEmpty(0)))[0] = 1
    await expect(run(cache.flushTables())).rejects.toBeDefined()
    expect(cache.hasDirty).toBe(true)
    fail = false
    await run(cache.flushTables())
    expect(cache.hasDirty).toBe(false)
  })

  it("refuses to write a table over other metadata (QEMU's pre-write overlap check)", async () => {
    const { storage, ops } = recordingStorage()
    const index = new OverlapIndex(512)
    index.addCluster("refcount block", 1024)
    index.addCluster("active L2 table", 1024)
    index.addCluster("active L2 table", 2048)
    const l2 = new TableCache({ name: "L2", tableSize: 512, capacityBytes: 8 * 512, storage, overlaps: { index, kind: "active L2 table" } })
    ;(await run(l2.getEmpty(2048)))[0] = 1
    await run(l2.flushTables())
    ;(await run(l2.getEmpty(1024)))[0] = 2
    const refused = await Effect.runPromise(Effect.flip(l2.flushTables()))
    expect(refused).toBeInstanceOf(MetadataOverlapError)
    expect(refused).toMatchObject({ offset: 1024, overlaps: "refcount block" })
    expect(ops).toEqual([{ kind: "write", offset: 2048, first: 1 }])
  })
})
