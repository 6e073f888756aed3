import { Effect, Exit } from "effect"
import type { Scope } from "effect"
import { IDBFactory, IDBKeyRange } from "fake-indexeddb"
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { blockStorageConformance } from "@qcow2/storage/testing"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { deleteIdbStore, listIdbStores, makeIdbStorageOpener, openIdbStorage, renameIdbStore, type IdbEnvironment } from "../src/index.js"

/** A fresh, isolated IndexedDB (fake-indexeddb) per use. */
const freshEnvironment = (): IdbEnvironment => ({ indexedDB: new IDBFactory(), IDBKeyRange })

let counter = 0
const makeStore = (chunkSize = 4096) => {
  const environment = freshEnvironment()
  return openIdbStorage("db", `s${counter++}`, { readOnly: false, create: true, chunkSize, environment })
}

blockStorageConformance("IndexedDB (fake-indexeddb), 4 KiB chunks", () => makeStore(4096))
blockStorageConformance("IndexedDB (fake-indexeddb), default chunks", () => makeStore(256 * 1024))

const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Effect.scoped(effect))

/** Opens a store, runs `use`, and closes it dropping unflushed writes: a crash or a killed tab. */
const crashAfter = <A>(env: IdbEnvironment, name: string, use: (s: BlockStorageShape) => Effect.Effect<A, StorageError>) =>
  run(Effect.flatMap(openIdbStorage("db", name, { readOnly: false, create: true, chunkSize: 4096, environment: env, commitOnClose: false }), use))

const readAll = (env: IdbEnvironment, name: string) =>
  run(
    Effect.gen(function* () {
      const s = yield* openIdbStorage("db", name, { readOnly: true, environment: env })
      const out = new Uint8Array(yield* s.size())
      yield* s.read(0, out)
      return out
    })
  )

describe("IndexedDB storage: flush is atomic", () => {
  it("after a crash the store is exactly as of the last completed flush, never a torn mix", async () => {
    const env = freshEnvironment()
    await crashAfter(env, "a", (s) =>
      Effect.gen(function* () {
        yield* s.write(0, new Uint8Array(10_000).fill(1))
        yield* s.flush()
        yield* s.write(5000, new Uint8Array(20_000).fill(2))
        yield* s.resize(3000)
      })
    )
    const got = await readAll(env, "a")
    expect(got.length).toBe(10_000)
    expect(got.every((b) => b === 1)).toBe(true)
  })

  it("property: for random writes, resizes, discards and flushes, a crash leaves the last flushed model", async () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant("write" as const), offset: fc.integer({ min: 0, max: 40_000 }), length: fc.integer({ min: 1, max: 9000 }), value: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant("resize" as const), size: fc.integer({ min: 0, max: 50_000 }) }),
      fc.record({ kind: fc.constant("discard" as const), offset: fc.integer({ min: 0, max: 40_000 }), length: fc.integer({ min: 1, max: 12_000 }) }),
      fc.record({ kind: fc.constant("flush" as const) })
    )
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 25 }), async (ops) => {
        const env = freshEnvironment()
        let model = new Uint8Array(0)
        let flushed = new Uint8Array(0)
        const resizeModel = (size: number) => {
          const next = new Uint8Array(size)
          next.set(model.subarray(0, Math.min(size, model.length)))
          model = next
        }
        const live = await crashAfter(env, "p", (s) =>
          Effect.gen(function* () {
            for (const o of ops) {
              if (o.kind === "write") {
                yield* s.write(o.offset, new Uint8Array(o.length).fill(o.value))
                if (o.offset + o.length > model.length) resizeModel(o.offset + o.length)
                model.fill(o.value, o.offset, o.offset + o.length)
              } else if (o.kind === "resize") {
                yield* s.resize(o.size)
                resizeModel(o.size)
              } else if (o.kind === "discard") {
                yield* s.discard(o.offset, o.length)
                model.fill(0, o.offset, Math.min(model.length, o.offset + o.length))
              } else {
                yield* s.flush()
                flushed = model.slice()
              }
            }
            const out = new Uint8Array(yield* s.size())
            yield* s.read(0, out)
            return out
          })
        )
        expect(Buffer.from(live).equals(Buffer.from(model))).toBe(true)
        const after = await readAll(env, "p").catch(() => new Uint8Array(0))
        expect(Buffer.from(after).equals(Buffer.from(flushed))).toBe(true)
      }),
      { numRuns: 40 }
    )
  })

  it("a full quota fails the flush with NoSpace and loses nothing: a later flush commits everything", async () => {
    const env = freshEnvironment()
    let full = true
    // Quota exhaustion as IndexedDB reports it: a put throws QuotaExceededError mid-transaction.
    const result = await run(
      Effect.gen(function* () {
        const s = yield* openIdbStorage("db", "q", { readOnly: false, create: true, chunkSize: 4096, environment: env })
        yield* s.write(0, new Uint8Array(8192).fill(7))
        const { IDBObjectStore } = yield* Effect.promise(() => import("fake-indexeddb"))
        const put = IDBObjectStore.prototype.put
        IDBObjectStore.prototype.put = function (this: IDBObjectStore, ...args: Parameters<IDBObjectStore["put"]>) {
          if (full) throw new DOMException("quota", "QuotaExceededError")
          return put.apply(this, args)
        }
        const failed = yield* Effect.exit(s.flush())
        full = false
        IDBObjectStore.prototype.put = put
        yield* s.flush()
        return failed
      })
    )
    expect(Exit.isFailure(result) && JSON.stringify(result.cause)).toContain("NoSpace")
    const got = await readAll(env, "q")
    expect(got.length).toBe(8192)
    expect(got.every((b) => b === 7)).toBe(true)
  })
})

describe("IndexedDB storage: one writer per store", () => {
  it("a second writer is refused with Locked while the first holds the store; readers share", async () => {
    const env = freshEnvironment()
    const outcome = await run(
      Effect.gen(function* () {
        yield* openIdbStorage("db", "w", { readOnly: false, create: true, environment: env })
        const second = yield* Effect.exit(Effect.scoped(openIdbStorage("db", "w", { readOnly: false, environment: env })))
        const reader = yield* Effect.exit(Effect.scoped(openIdbStorage("db", "w", { readOnly: true, environment: env })))
        return { second, reader }
      })
    )
    expect(Exit.isFailure(outcome.second) && JSON.stringify(outcome.second.cause)).toContain("Locked")
    expect(Exit.isFailure(outcome.reader)).toBe(true)
    // Released with the scope: open again.
    await run(openIdbStorage("db", "w", { readOnly: false, environment: env }))
    await run(
      Effect.gen(function* () {
        yield* openIdbStorage("db", "w", { readOnly: true, environment: env })
        yield* openIdbStorage("db", "w", { readOnly: true, environment: env })
      })
    )
  })
})

describe("IndexedDB opener and library", () => {
  it("resolves backing names against the image's folder and keeps absolute names", () => {
    const opener = makeIdbStorageOpener()
    expect(opener.resolve("idb://db/vm/top.qcow2", "base.qcow2")).toBe("idb://db/vm/base.qcow2")
    expect(opener.resolve("idb://db/top.qcow2", "base.qcow2")).toBe("idb://db/base.qcow2")
    expect(opener.resolve("idb://db/vm/top.qcow2", "https://example.com/base.qcow2")).toBe("https://example.com/base.qcow2")
    expect(opener.resolve("idb://db/vm/top.qcow2", "idb://other/x")).toBe("idb://other/x")
  })

  it("lists, renames and deletes stores; opening a missing store without create is NotFound", async () => {
    const environment = freshEnvironment()
    const opener = makeIdbStorageOpener({ environment, chunkSize: 4096 })
    await run(
      Effect.gen(function* () {
        const a = yield* opener.open("idb://lib/a.qcow2", { readOnly: false, create: true })
        yield* a.write(0, new Uint8Array(5000).fill(3))
        yield* a.flush()
      })
    )
    await run(Effect.asVoid(opener.open("idb://lib/b.raw", { readOnly: false, create: true })))
    expect(await Effect.runPromise(listIdbStores("lib", environment))).toEqual([
      { name: "a.qcow2", size: 5000, chunkSize: 4096 },
      { name: "b.raw", size: 0, chunkSize: 4096 }
    ])
    await Effect.runPromise(renameIdbStore("lib", "a.qcow2", "c.qcow2", environment))
    const refused = await Effect.runPromise(Effect.exit(renameIdbStore("lib", "c.qcow2", "b.raw", environment)))
    expect(Exit.isFailure(refused)).toBe(true)
    await Effect.runPromise(deleteIdbStore("lib", "b.raw", environment))
    expect((await Effect.runPromise(listIdbStores("lib", environment))).map((s) => s.name)).toEqual(["c.qcow2"])
    const moved = await run(
      Effect.gen(function* () {
        const c = yield* opener.open("idb://lib/c.qcow2", { readOnly: true })
        const out = new Uint8Array(5000)
        yield* c.read(0, out)
        return out
      })
    )
    expect(moved.every((b) => b === 3)).toBe(true)
    const missing = await Effect.runPromise(Effect.exit(Effect.scoped(opener.open("idb://lib/a.qcow2", { readOnly: true }))))
    expect(Exit.isFailure(missing) && JSON.stringify(missing.cause)).toContain("NotFound")
  })
})
