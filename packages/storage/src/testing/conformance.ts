import { Effect, Result } from "effect"
import type { Scope } from "effect"
import { describe, expect, it } from "vitest"
import type { BlockStorageShape } from "../BlockStorage.js"
import type { StorageError, StorageErrorReason } from "../errors.js"
import { ModelStore } from "./model.js"
import { patternBytes, seededRandom } from "./random.js"

/** Makes the store under test. Writable backends must return an empty store. */
export type MakeStorage = () => Effect.Effect<BlockStorageShape, StorageError, Scope.Scope>

/** Makes a store whose content (and size) is exactly `content`. */
export type MakeStorageWithContent = (content: Uint8Array) => Effect.Effect<BlockStorageShape, StorageError, Scope.Scope>

/** Options of {@link blockStorageConformance} for a writable backend. */
export interface WritableConformanceOptions {
  readonly readOnly?: false
  /**
   * Makes a store holding given content. Default: `make()` followed by
   * `write(0, content)`; give it when the backend has a cheaper or more
   * realistic way to start from existing bytes (a file written beforehand).
   */
  readonly makeWithContent?: MakeStorageWithContent
  /**
   * Offset of the "far past the end" write and resize; the store must handle
   * a sparse store of that size. Default 5 GiB + 12345 (past 2^32, unaligned).
   */
  readonly farOffset?: number
}

/**
 * Options of {@link blockStorageConformance} for a read-only backend (HTTP):
 * it cannot be written, so the suite gets its content from `makeWithContent`
 * (e.g. publish the bytes on a test server, then open the URL).
 */
export interface ReadOnlyConformanceOptions {
  readonly readOnly: true
  readonly makeWithContent: MakeStorageWithContent
}

/** How `blockStorageConformance` runs: on a writable backend, or read-only with stores made from given content. */
export type ConformanceOptions = WritableConformanceOptions | ReadOnlyConformanceOptions

/** Size of the content the suite gives `makeWithContent`: three 64 KiB pages and a bit. */
export const CONFORMANCE_CONTENT_SIZE = 3 * 65536 + 1234

const DEFAULT_FAR_OFFSET = 5 * 1024 * 1024 * 1024 + 12345

const INVALID_NUMBERS: ReadonlyArray<number> = [
  -1,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  1.5,
  2 ** 53,
  2 ** 64
]

/** Runs `effect` and returns its StorageError, failing the test if it succeeds. */
const failureOf = <A>(effect: Effect.Effect<A, StorageError>): Effect.Effect<StorageError> =>
  Effect.map(Effect.result(effect), (result) => {
    if (Result.isSuccess(result)) {
      expect.fail(`expected a StorageError, but the operation succeeded with ${String(result.success)}`)
    }
    return (result as Result.Failure<A, StorageError>).failure
  })

const expectReason = <A>(effect: Effect.Effect<A, StorageError>, reason: StorageErrorReason) =>
  Effect.map(failureOf(effect), (error) => {
    expect(error._tag).toBe("StorageError")
    expect(error.reason).toBe(reason)
    expect(typeof error.message).toBe("string")
  })

const readBytes = (storage: BlockStorageShape, offset: number, length: number): Effect.Effect<Uint8Array, StorageError> =>
  Effect.suspend(() => {
    // Garbage first: a backend must overwrite every byte, zeros included.
    const into = new Uint8Array(length).fill(0xa5)
    return Effect.as(storage.read(offset, into), into)
  })

/** Compares bytes without printing megabytes on failure. */
const expectBytes = (actual: Uint8Array, expected: Uint8Array, what: string): void => {
  expect(actual.length, `${what}: length`).toBe(expected.length)
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) {
      expect.fail(`${what}: byte ${i} is ${actual[i]}, expected ${expected[i]}`)
    }
  }
}

const expectZeros = (actual: Uint8Array, what: string): void => {
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== 0) expect.fail(`${what}: byte ${i} is ${actual[i]}, expected 0`)
  }
}

/**
 * The one conformance suite every {@link BlockStorageShape} backend runs
 * (memory, Node file, IndexedDB, HTTP). Call it at the top level of a test
 * file; it registers a `describe` block.
 *
 * The contract it checks (BlockStorage.ts documents the interface):
 * - `read` fills the whole buffer: bytes past the end read as zeros, a
 *   zero-length read succeeds anywhere, reads never change `size`.
 * - `write` stores all bytes and grows `size` to the write's end; a gap left
 *   by a write past the end reads as zeros; a zero-length write changes nothing.
 * - `resize` sets `size`; growing exposes zeros, also where data was cut off
 *   by an earlier shrink.
 * - `discard` never changes `size` or bytes outside its range; the range's
 *   content is unspecified afterwards unless `capabilities.discard`, in which
 *   case it reads as zeros.
 * - `flush` succeeds on any store, read-only included.
 * - Read-only stores reject `write`, `resize` and `discard` with reason
 *   `ReadOnly` and keep their content.
 * - Offsets, lengths and sizes that are not non-negative safe integers (or
 *   whose end passes 2^53 - 1) fail with reason `OutOfRange`.
 * - Concurrent operations on disjoint ranges (`Effect.all`, concurrency 16)
 *   do not interfere.
 *
 * @param name shown in the test names.
 * @param make a fresh store per test (empty for writable backends), scoped:
 *   the suite closes the scope at the end of each test.
 */
export function blockStorageConformance(name: string, make: MakeStorage, options: ConformanceOptions = {}): void {
  const readOnly = options.readOnly === true
  const makeWithContent: MakeStorageWithContent = options.makeWithContent ??
    ((content) => Effect.tap(make(), (storage) => storage.write(0, content)))
  const farOffset = options.readOnly === true ? DEFAULT_FAR_OFFSET : (options.farOffset ?? DEFAULT_FAR_OFFSET)
  const content = patternBytes(CONFORMANCE_CONTENT_SIZE, 0x5eed)
  const contentModel = new ModelStore()
  contentModel.write(0, content)

  const withStore = (body: (storage: BlockStorageShape) => Effect.Effect<void, StorageError>) => () =>
    Effect.runPromise(Effect.scoped(Effect.flatMap(make(), body)))
  const withContent = (body: (storage: BlockStorageShape) => Effect.Effect<void, StorageError>) => () =>
    Effect.runPromise(Effect.scoped(Effect.flatMap(makeWithContent(content), body)))

  describe(`BlockStorage conformance: ${name}`, () => {
    it("describes itself", withStore((storage) =>
      Effect.sync(() => {
        expect(typeof storage.location).toBe("string")
        expect(storage.location.length).toBeGreaterThan(0)
        expect(storage.capabilities.readOnly).toBe(readOnly)
        expect(typeof storage.capabilities.discard).toBe("boolean")
        expect(Number.isSafeInteger(storage.capabilities.alignment)).toBe(true)
        expect(storage.capabilities.alignment).toBeGreaterThanOrEqual(1)
      })
    ))

    it("starts with the given content", withContent((storage) =>
      Effect.gen(function*() {
        expect(yield* storage.size()).toBe(content.length)
        expectBytes(yield* readBytes(storage, 0, content.length), content, "whole content")
      })
    ))

    it("reads any offset and length, zeros past the end", withContent((storage) =>
      Effect.gen(function*() {
        const n = content.length
        const cases: ReadonlyArray<readonly [number, number]> = [
          [0, 0], [0, 1], [0, 512], [1, 511], [4095, 4098], [65535, 2], [65536, 65536],
          [100_000, 50_000], [n - 1, 1], [n - 100, 300], [n, 0], [n, 10], [n + 12_345, 4096],
          [0, n], [0, n + 777], [farOffset, 16], [Number.MAX_SAFE_INTEGER, 0]
        ]
        for (const [offset, length] of cases) {
          expectBytes(yield* readBytes(storage, offset, length), contentModel.read(offset, length), `read(${offset}, ${length})`)
        }
        expect(yield* storage.size()).toBe(n)
      })
    ))

    it("reads into a view with a byte offset without touching the bytes around it", withContent((storage) =>
      Effect.gen(function*() {
        const backing = new Uint8Array(10_000).fill(0xee)
        const view = backing.subarray(1000, 9000)
        yield* storage.read(content.length - 4000, view)
        expectBytes(view, contentModel.read(content.length - 4000, 8000), "view")
        expectBytes(backing.subarray(0, 1000), new Uint8Array(1000).fill(0xee), "before the view")
        expectBytes(backing.subarray(9000), new Uint8Array(1000).fill(0xee), "after the view")
      })
    ))

    it("rejects invalid read offsets with OutOfRange", withContent((storage) =>
      Effect.gen(function*() {
        for (const bad of INVALID_NUMBERS) {
          yield* expectReason(storage.read(bad, new Uint8Array(4)), "OutOfRange")
        }
        yield* expectReason(storage.read(Number.MAX_SAFE_INTEGER - 1, new Uint8Array(16)), "OutOfRange")
      })
    ))

    it("serves concurrent reads", withContent((storage) =>
      Effect.gen(function*() {
        const ranges = Array.from({ length: 48 }, (_, i) => [(i * 4099) % content.length, 1000 + (i * 977) % 9000] as const)
        const results = yield* Effect.all(
          ranges.map(([offset, length]) => readBytes(storage, offset, length)),
          { concurrency: 16 }
        )
        ranges.forEach(([offset, length], i) => expectBytes(results[i], contentModel.read(offset, length), `read #${i}`))
      })
    ))

    it("flushes", withContent((storage) =>
      Effect.gen(function*() {
        yield* storage.flush()
        expect(yield* storage.size()).toBe(content.length)
      })
    ))

    if (readOnly) {
      it("rejects write, resize and discard with ReadOnly and keeps its content", withContent((storage) =>
        Effect.gen(function*() {
          yield* expectReason(storage.write(0, new Uint8Array(16).fill(1)), "ReadOnly")
          yield* expectReason(storage.write(content.length, new Uint8Array(16).fill(1)), "ReadOnly")
          yield* expectReason(storage.resize(0), "ReadOnly")
          yield* expectReason(storage.resize(content.length * 2), "ReadOnly")
          yield* expectReason(storage.discard(0, 65536), "ReadOnly")
          expect(yield* storage.size()).toBe(content.length)
          expectBytes(yield* readBytes(storage, 0, content.length), content, "content after rejected writes")
        })
      ))
      return
    }

    it("starts empty", withStore((storage) =>
      Effect.gen(function*() {
        expect(yield* storage.size()).toBe(0)
        expectZeros(yield* readBytes(storage, 0, 4096), "empty store")
      })
    ))

    it("reads back what was written, growing the size", withStore((storage) =>
      Effect.gen(function*() {
        const data = patternBytes(10_000, 1)
        yield* storage.write(0, data)
        expect(yield* storage.size()).toBe(10_000)
        expectBytes(yield* readBytes(storage, 0, 10_000), data, "written data")
        expectBytes(yield* readBytes(storage, 9_000, 2_000), contentModelOf([[0, data]]).read(9_000, 2_000), "across the end")
        const more = patternBytes(3, 2)
        yield* storage.write(10_000, more)
        expect(yield* storage.size()).toBe(10_003)
      })
    ))

    it("writes from a view with a byte offset", withStore((storage) =>
      Effect.gen(function*() {
        const backing = patternBytes(10_000, 3)
        yield* storage.write(77, backing.subarray(500, 4500))
        expect(yield* storage.size()).toBe(4077)
        expectBytes(yield* readBytes(storage, 77, 4000), backing.subarray(500, 4500), "written view")
        expectZeros(yield* readBytes(storage, 0, 77), "before the view's data")
      })
    ))

    it("keeps a zero-length write from changing anything", withStore((storage) =>
      Effect.gen(function*() {
        yield* storage.write(0, new Uint8Array(0))
        yield* storage.write(123_456, new Uint8Array(0))
        expect(yield* storage.size()).toBe(0)
        yield* storage.write(0, patternBytes(100, 4))
        yield* storage.write(5000, new Uint8Array(0))
        expect(yield* storage.size()).toBe(100)
      })
    ))

    it("matches a reference model under unaligned, overlapping writes and resizes", withStore((storage) =>
      Effect.gen(function*() {
        const model = new ModelStore()
        const next = seededRandom(42)
        for (let step = 0; step < 120; step++) {
          const choice = next() % 10
          if (choice < 7) {
            const offset = next() % 300_000
            const length = next() % 4 === 0 ? next() % 8 : next() % 70_000
            const data = patternBytes(length, step + 1000)
            yield* storage.write(offset, data)
            model.write(offset, data)
          } else if (choice < 8) {
            const size = next() % 320_000
            yield* storage.resize(size)
            model.resize(size)
          } else {
            const offset = next() % 330_000
            const length = next() % 80_000
            expectBytes(yield* readBytes(storage, offset, length), model.read(offset, length), `step ${step} read(${offset}, ${length})`)
          }
          expect(yield* storage.size(), `size after step ${step}`).toBe(model.size)
        }
        expectBytes(yield* readBytes(storage, 0, model.size + 1000), model.read(0, model.size + 1000), "final content")
      })
    ))

    it("overwrites initial content", withContent((storage) =>
      Effect.gen(function*() {
        const model = contentModelOf([[0, content]])
        const data = patternBytes(70_000, 5)
        yield* storage.write(60_000, data)
        model.write(60_000, data)
        const tail = patternBytes(500, 6)
        yield* storage.write(content.length - 200, tail)
        model.write(content.length - 200, tail)
        expect(yield* storage.size()).toBe(model.size)
        expectBytes(yield* readBytes(storage, 0, model.size), model.read(0, model.size), "content")
      })
    ))

    it("writes far past the end, leaving a gap of zeros", withStore((storage) =>
      Effect.gen(function*() {
        yield* storage.write(0, patternBytes(1000, 7))
        const data = patternBytes(4096, 8)
        yield* storage.write(farOffset, data)
        expect(yield* storage.size()).toBe(farOffset + 4096)
        expectBytes(yield* readBytes(storage, farOffset, 4096), data, "far data")
        const around = yield* readBytes(storage, farOffset - 100, 200)
        expectZeros(around.subarray(0, 100), "just before the far data")
        expectBytes(around.subarray(100), data.subarray(0, 100), "start of the far data")
        expectZeros(yield* readBytes(storage, 1000, 65536), "gap after the first write")
        expectZeros(yield* readBytes(storage, Math.floor(farOffset / 2), 4096), "middle of the gap")
        expectZeros(yield* readBytes(storage, farOffset + 4096, 100), "past the end")
      })
    ))

    it("resizes: grow exposes zeros, shrink drops data for good", withStore((storage) =>
      Effect.gen(function*() {
        const data = patternBytes(10_000, 9)
        yield* storage.write(0, data)
        yield* storage.resize(20_000)
        expect(yield* storage.size()).toBe(20_000)
        expectBytes(yield* readBytes(storage, 0, 10_000), data, "data after grow")
        expectZeros(yield* readBytes(storage, 10_000, 10_000), "grown part")
        yield* storage.resize(5_000)
        expect(yield* storage.size()).toBe(5_000)
        expectBytes(yield* readBytes(storage, 0, 5_000), data.subarray(0, 5_000), "data after shrink")
        expectZeros(yield* readBytes(storage, 5_000, 5_000), "past the end after shrink")
        yield* storage.resize(10_000)
        expectZeros(yield* readBytes(storage, 5_000, 5_000), "regrown part (old data must not come back)")
        yield* storage.resize(10_000)
        expect(yield* storage.size()).toBe(10_000)
        yield* storage.resize(farOffset)
        expect(yield* storage.size()).toBe(farOffset)
        expectZeros(yield* readBytes(storage, farOffset - 4096, 4096), "end of a far resize")
        yield* storage.resize(0)
        expect(yield* storage.size()).toBe(0)
        expectZeros(yield* readBytes(storage, 0, 100), "after resize to zero")
      })
    ))

    it("discards without touching bytes outside the range or the size", withContent((storage) =>
      Effect.gen(function*() {
        const n = content.length
        const ranges: ReadonlyArray<readonly [number, number]> = [[100, 100], [4096, 2 * 65536], [n - 50, 1000], [n + 1000, 5000], [0, 0]]
        for (const [offset, length] of ranges) yield* storage.discard(offset, length)
        expect(yield* storage.size()).toBe(n)
        const after = yield* readBytes(storage, 0, n)
        let previousEnd = 0
        for (const [offset, length] of ranges) {
          const start = Math.min(offset, n)
          const end = Math.min(offset + length, n)
          if (start > previousEnd) {
            expectBytes(after.subarray(previousEnd, start), content.subarray(previousEnd, start), `kept [${previousEnd}, ${start})`)
          }
          if (storage.capabilities.discard) expectZeros(after.subarray(start, end), `discarded [${start}, ${end})`)
          previousEnd = Math.max(previousEnd, end)
        }
      })
    ))

    it("writes after a discard read back", withContent((storage) =>
      Effect.gen(function*() {
        yield* storage.discard(0, 65536)
        const data = patternBytes(1000, 10)
        yield* storage.write(30_000, data)
        expectBytes(yield* readBytes(storage, 30_000, 1000), data, "rewritten data")
        expectBytes(yield* readBytes(storage, 65536, 1000), content.subarray(65536, 66536), "untouched data")
      })
    ))

    it("rejects invalid write, resize and discard arguments with OutOfRange", withStore((storage) =>
      Effect.gen(function*() {
        for (const bad of INVALID_NUMBERS) {
          yield* expectReason(storage.write(bad, new Uint8Array(4)), "OutOfRange")
          yield* expectReason(storage.resize(bad), "OutOfRange")
          yield* expectReason(storage.discard(bad, 4096), "OutOfRange")
          yield* expectReason(storage.discard(0, bad), "OutOfRange")
        }
        yield* expectReason(storage.write(Number.MAX_SAFE_INTEGER - 1, new Uint8Array(16)), "OutOfRange")
        expect(yield* storage.size()).toBe(0)
      })
    ))

    it("serves concurrent writes and reads to disjoint ranges", withStore((storage) =>
      Effect.gen(function*() {
        const pieces = Array.from({ length: 64 }, (_, i) => ({
          offset: i * 20_011,
          data: patternBytes(4096 + i * 13, 100 + i)
        }))
        yield* Effect.all(pieces.map(({ data, offset }) => storage.write(offset, data)), { concurrency: 16, discard: true })
        const last = pieces[pieces.length - 1]
        expect(yield* storage.size()).toBe(last.offset + last.data.length)
        const back = yield* Effect.all(
          pieces.map(({ data, offset }) => readBytes(storage, offset, data.length)),
          { concurrency: 16 }
        )
        pieces.forEach(({ data }, i) => expectBytes(back[i], data, `piece ${i}`))
        // Reads of written pieces interleaved with writes of new ones.
        const fresh = pieces.map(({ data, offset }, i) => ({ offset: offset + 10_000, data: patternBytes(data.length, 500 + i) }))
        const mixed = yield* Effect.all(
          pieces.flatMap(({ data, offset }, i) => [
            readBytes(storage, offset, data.length),
            Effect.as(storage.write(fresh[i].offset, fresh[i].data), new Uint8Array(0))
          ]),
          { concurrency: 16 }
        )
        pieces.forEach(({ data }, i) => expectBytes(mixed[2 * i], data, `piece ${i} read during writes`))
        const freshBack = yield* Effect.all(
          fresh.map(({ data, offset }) => readBytes(storage, offset, data.length)),
          { concurrency: 16 }
        )
        fresh.forEach(({ data }, i) => expectBytes(freshBack[i], data, `fresh piece ${i}`))
      })
    ))

    it("flushes after writes and keeps the data", withStore((storage) =>
      Effect.gen(function*() {
        const data = patternBytes(70_000, 11)
        yield* storage.write(1000, data)
        yield* storage.flush()
        yield* storage.flush()
        expectBytes(yield* readBytes(storage, 1000, data.length), data, "flushed data")
        expect(yield* storage.size()).toBe(71_000)
      })
    ))
  })
}

const contentModelOf = (writes: ReadonlyArray<readonly [number, Uint8Array]>): ModelStore => {
  const model = new ModelStore()
  for (const [offset, data] of writes) model.write(offset, data)
  return model
}
