import { Deferred, Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { BlockStorageShape } from "../src/index.js"
import { makeMemoryStorage } from "../src/index.js"
import { blockStorageConformance, makeCrashRecorder, makeFaultInjector, patternBytes } from "../src/testing/index.js"

const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect)

const contentOf = (storage: BlockStorageShape) =>
  Effect.gen(function*() {
    const into = new Uint8Array(yield* storage.size())
    yield* storage.read(0, into)
    return into
  })

blockStorageConformance("crash recorder over memory", () => Effect.succeed(makeCrashRecorder(makeMemoryStorage()).storage))

describe("makeCrashRecorder", () => {
  it("records successful mutations in order, copying write data", async () => {
    const recorder = makeCrashRecorder(makeMemoryStorage())
    const buffer = patternBytes(100, 1)
    const expected = buffer.slice()
    await run(Effect.gen(function*() {
      yield* recorder.storage.write(10, buffer)
      buffer.fill(0)
      yield* recorder.storage.flush()
      yield* recorder.storage.resize(50)
      yield* recorder.storage.discard(0, 20)
      const into = new Uint8Array(4)
      yield* recorder.storage.read(0, into)
      yield* recorder.storage.size()
    }))
    const ops = recorder.operations()
    expect(ops.map((op) => op._tag)).toEqual(["Write", "Flush", "Resize", "Discard"])
    expect(ops[0]).toEqual({ _tag: "Write", offset: 10, data: expected })
    expect(ops[1]).toEqual({ _tag: "Flush", durable: 1 })
    expect(ops[2]).toEqual({ _tag: "Resize", size: 50 })
    expect(ops[3]).toEqual({ _tag: "Discard", offset: 0, length: 20, zeroes: true })
  })

  it("replays every prefix exactly with keepUnflushed \"all\"", async () => {
    const initial = patternBytes(3000, 2)
    const inner = makeMemoryStorage({ initial })
    const recorder = makeCrashRecorder(inner, { initial })
    const snapshots: Array<Uint8Array> = [initial.slice()]
    await run(Effect.gen(function*() {
      const s = recorder.storage
      const steps: ReadonlyArray<Effect.Effect<void, unknown>> = [
        s.write(100, patternBytes(500, 3)),
        s.flush(),
        s.write(2900, patternBytes(400, 4)),
        s.resize(1000),
        s.write(5000, patternBytes(10, 5)),
        s.flush(),
        s.discard(0, 200),
        s.resize(8000)
      ]
      for (const step of steps) {
        yield* step
        snapshots.push(yield* contentOf(inner))
      }
    }))
    expect(recorder.operations().length).toBe(snapshots.length - 1)
    snapshots.forEach((snapshot, cut) => {
      expect(recorder.stateAt(cut)).toEqual(snapshot)
      expect(recorder.stateAt(cut, { keepUnflushed: { seed: 9, probability: 1 } })).toEqual(snapshot)
    })
    expect(recorder.durableAt(0)).toBe(0)
    expect(recorder.durableAt(2)).toBe(1)
    expect(recorder.durableAt(5)).toBe(1)
    expect(recorder.durableAt(6)).toBe(5)
    expect(recorder.stateAt(5, { keepUnflushed: "none" })).toEqual(snapshots[1])
    expect(recorder.stateAt(8, { keepUnflushed: "none" })).toEqual(snapshots[5])
    expect(recorder.stateAt(8, { keepUnflushed: { seed: 1, probability: 0 } })).toEqual(snapshots[5])
    const reopened = recorder.storageAt(7)
    expect(await run(contentOf(reopened))).toEqual(snapshots[7])
    expect(() => recorder.stateAt(9)).toThrow(RangeError)
    expect(() => recorder.stateAt(-1)).toThrow(RangeError)
  })

  it("keeps a seeded random subset of unflushed writes, whole or torn by sector", async () => {
    const recorder = makeCrashRecorder(makeMemoryStorage())
    await run(Effect.gen(function*() {
      yield* recorder.storage.write(0, new Uint8Array(16 * 512).fill(1))
      yield* recorder.storage.flush()
      for (let i = 0; i < 16; i++) yield* recorder.storage.write(i * 512, new Uint8Array(512).fill(2 + i))
      yield* recorder.storage.write(0, new Uint8Array(16 * 512).fill(99))
    }))
    const cut = recorder.operations().length
    const kinds = new Set<string>()
    for (let seed = 0; seed < 20; seed++) {
      const state = recorder.stateAt(cut, { keepUnflushed: { seed } })
      expect(recorder.stateAt(cut, { keepUnflushed: { seed } })).toEqual(state)
      expect(state.length).toBe(16 * 512)
      for (let i = 0; i < 16; i++) {
        const sector = state.subarray(i * 512, (i + 1) * 512)
        expect(sector.every((b) => b === sector[0])).toBe(true)
        expect([1, 2 + i, 99]).toContain(sector[0])
      }
      kinds.add(Array.from({ length: 16 }, (_, i) => state[i * 512]).join(","))
      // Without tearing the final 8 KiB write lands whole or not at all.
      const last = state.subarray(0, 16 * 512).every((b) => b === 99)
      const none = !state.some((b) => b === 99)
      expect(last || none).toBe(true)
    }
    expect(kinds.size).toBeGreaterThan(5)
    let torn = false
    for (let seed = 0; seed < 20; seed++) {
      const state = recorder.stateAt(cut, { keepUnflushed: { seed, probability: 1, sector: 512 } })
      const nines = Array.from({ length: 16 }, (_, i) => state[i * 512] === 99).filter(Boolean).length
      if (nines > 0 && nines < 16) torn = true
    }
    expect(torn).toBe(true)
  })

  it("does not count a write that completed during a flush as flushed", async () => {
    const inner = makeMemoryStorage()
    // The flush is under way (started) until the write has completed: no timing involved.
    const flushStarted = Deferred.makeUnsafe<void>()
    const written = Deferred.makeUnsafe<void>()
    const slowFlush: BlockStorageShape = {
      ...inner,
      flush: () => Effect.andThen(Effect.andThen(Deferred.succeed(flushStarted, undefined), Deferred.await(written)), inner.flush())
    }
    const recorder = makeCrashRecorder(slowFlush)
    await run(Effect.all([
      recorder.storage.flush(),
      Deferred.await(flushStarted).pipe(
        Effect.andThen(recorder.storage.write(0, new Uint8Array(8).fill(7))),
        Effect.andThen(Deferred.succeed(written, undefined))
      )
    ], { concurrency: 2 }))
    expect(recorder.operations().map((op) => op._tag)).toEqual(["Write", "Flush"])
    expect(recorder.durableAt(2)).toBe(0)
    expect(recorder.stateAt(2, { keepUnflushed: "none" })).toEqual(new Uint8Array(0))
  })

  it("does not record failed operations", async () => {
    const faults = makeFaultInjector(makeMemoryStorage())
    const recorder = makeCrashRecorder(faults.storage)
    faults.failNth("write", 2)
    faults.failNth("flush", 1)
    await run(Effect.gen(function*() {
      yield* recorder.storage.write(0, new Uint8Array(4).fill(1))
      yield* Effect.flip(recorder.storage.write(4, new Uint8Array(4).fill(2)))
      yield* Effect.flip(recorder.storage.flush())
      yield* recorder.storage.flush()
    }))
    expect(recorder.operations()).toEqual([
      { _tag: "Write", offset: 0, data: new Uint8Array(4).fill(1) },
      { _tag: "Flush", durable: 1 }
    ])
  })

  it("models discard as a no-op when the store cannot release space", async () => {
    const recorder = makeCrashRecorder(makeMemoryStorage({ discard: false }))
    await run(Effect.gen(function*() {
      yield* recorder.storage.write(0, new Uint8Array(10).fill(3))
      yield* recorder.storage.discard(0, 10)
    }))
    expect(recorder.stateAt(2)).toEqual(new Uint8Array(10).fill(3))
  })
})
