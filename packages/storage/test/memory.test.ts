import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { makeMemoryStorage, StorageError, writeNowFor, writeNowOf, type BlockStorageShape } from "../src/index.js"
import { blockStorageConformance } from "../src/testing/index.js"

blockStorageConformance("memory", () => Effect.succeed(makeMemoryStorage()))

blockStorageConformance("memory from initial content", () => Effect.succeed(makeMemoryStorage()), {
  makeWithContent: (content) => Effect.succeed(makeMemoryStorage({ initial: content }))
})

blockStorageConformance("memory without discard", () => Effect.succeed(makeMemoryStorage({ discard: false })))

blockStorageConformance("memory read-only", () => Effect.succeed(makeMemoryStorage({ readOnly: true })), {
  readOnly: true,
  makeWithContent: (content) => Effect.succeed(makeMemoryStorage({ initial: content, readOnly: true }))
})

describe("writeNow", () => {
  it("writes at once what write would, and refuses what write refuses", async () => {
    const storage = makeMemoryStorage()
    const now = writeNowOf(storage)!
    expect(now(4096, new Uint8Array([1, 2, 3]))).toBe(true)
    const back = new Uint8Array(5)
    await Effect.runPromise(storage.read(4095, back))
    expect([...back]).toEqual([0, 1, 2, 3, 0])
    expect(await Effect.runPromise(storage.size())).toBe(4099)
    const refused = now(-1, new Uint8Array(1))
    expect(refused).toBeInstanceOf(StorageError)
    expect((refused as StorageError).reason).toBe("OutOfRange")
    expect(writeNowOf(makeMemoryStorage({ readOnly: true }))).toBeUndefined()
  })

  it("is ignored once a wrapper replaces write, so the wrapper's write is never bypassed", () => {
    const storage = makeMemoryStorage()
    const wrapped: BlockStorageShape = { ...storage, write: (offset, data) => storage.write(offset, data) }
    expect(wrapped.writeNow).toBeDefined()
    expect(writeNowOf(wrapped)).toBeUndefined()
    const forwarded: BlockStorageShape = { ...wrapped, writeNow: writeNowFor(wrapped.write, (offset, data) => storage.writeNow!(offset, data)) }
    expect(writeNowOf(forwarded)).toBe(forwarded.writeNow)
  })
})
