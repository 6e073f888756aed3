import { BlockStorage, StorageError, StorageOpener } from "@qcow2/storage"
import { Effect, Exit, Fiber, Result, type Scope } from "effect"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { HttpStorage, HttpStorageOpener, openHttp, type HttpStorageOptions } from "../src/index.js"
import { pattern, TestServer } from "./server.js"

const KiB = 1024
const MiB = 1024 * KiB
const server = new TestServer()

beforeAll(() => server.start())
afterAll(() => server.stop())
beforeEach(() => server.reset())

const run = <A>(effect: Effect.Effect<A, StorageError, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(effect))

/** Runs `effect` and returns its StorageError; fails the test if it succeeds. */
const failure = async <A>(effect: Effect.Effect<A, StorageError, Scope.Scope>): Promise<StorageError> => {
  const result = await Effect.runPromise(Effect.scoped(Effect.result(effect)))
  if (Result.isSuccess(result)) expect.fail("expected a StorageError")
  return (result as Result.Failure<A, StorageError>).failure
}

const read = (storage: { read: (o: number, b: Uint8Array) => Effect.Effect<void, StorageError> }, offset: number, length: number) =>
  Effect.suspend(() => {
    const into = new Uint8Array(length).fill(0xa5)
    return Effect.as(storage.read(offset, into), into)
  })

const expectSame = (actual: Uint8Array, expected: Uint8Array) => {
  expect(actual.length).toBe(expected.length)
  expect(Buffer.compare(actual, expected)).toBe(0)
}

/** Small blocks keep the tests fast and the request arithmetic readable. */
const small: HttpStorageOptions = { blockSize: 4096, retryBaseDelayMs: 1, retryMaxDelayMs: 20 }

describe("probe", () => {
  it("learns size and validators with one HEAD", async () => {
    const data = pattern(100_000)
    const url = server.put("/a.img", data)
    const info = await run(Effect.map(openHttp(url, small), (s) => ({ remote: s.remote, stats: s.stats(), caps: s.capabilities })))
    expect(info.remote.size).toBe(100_000)
    expect(info.remote.etag).toMatch(/^"v\d+-100000"$/)
    expect(info.remote.lastModified).toContain("2026")
    expect(info.remote.acceptRanges).toBe("bytes")
    expect(info.stats.requests).toBe(1)
    expect(info.caps.readOnly).toBe(true)
    expect(server.requests("/a.img").map((r) => r.method)).toEqual(["HEAD"])
  })

  it("falls back to a bytes=0-0 GET when HEAD is refused", async () => {
    const data = pattern(50_000, 2)
    const url = server.put("/nohead.img", data)
    server.headStatus = 405
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      expect(s.remote.size).toBe(50_000)
      return yield* read(s, 1000, 20_000)
    }))
    expectSame(got, data.subarray(1000, 21_000))
    const log = server.requests("/nohead.img")
    expect(log.slice(0, 2).map((r) => `${r.method} ${r.range ?? ""}`)).toEqual(["HEAD ", "GET bytes=0-0"])
  })

  it("treats 501 to HEAD as refused too, and learns an empty file from 416", async () => {
    const url = server.put("/empty.img", new Uint8Array(0))
    server.headStatus = 501
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      expect(yield* s.size()).toBe(0)
      const bytes = yield* read(s, 0, 1000)
      return { bytes, requests: s.stats().requests }
    }))
    expect(got.bytes.every((b) => b === 0)).toBe(true)
    expect(got.requests).toBe(2)
  })

  it("reports NotFound and PermissionDenied", async () => {
    expect((await failure(openHttp(server.url("/missing.img"), small))).reason).toBe("NotFound")
    server.put("/secret.img", pattern(10))
    server.faults = [{ kind: "status", status: 403 }, { kind: "status", status: 403 }]
    const denied = await failure(openHttp(server.url("/secret.img"), small))
    expect(denied.reason).toBe("PermissionDenied")
    expect(denied.message).toContain("403")
    expect(server.requests("/secret.img").map((r) => r.method)).toEqual(["HEAD", "GET"])
  })

  it("rejects bad URLs and options", async () => {
    expect((await failure(openHttp("ftp://example.com/x.img"))).reason).toBe("Unsupported")
    expect((await failure(openHttp("not a url"))).reason).toBe("NotFound")
    const bad = await failure(openHttp(server.url("/x"), { blockSize: 1000 }))
    expect(bad.reason).toBe("Unsupported")
    expect(bad.message).toContain("blockSize")
    expect(server.log.length).toBe(0)
  })
})

describe("servers that ignore Range", () => {
  it("fail at open when HEAD says Accept-Ranges: none and the file is larger than a block", async () => {
    const url = server.put("/norange.img", pattern(64 * KiB))
    server.ignoreRange = true
    server.acceptRanges = "none"
    const error = await failure(openHttp(url, small))
    expect(error.reason).toBe("Unsupported")
    expect(error.message).toContain("ignores HTTP Range")
    expect(server.requests("/norange.img", "GET").length).toBe(0)
  })

  it("fail at the first read, without downloading the file, when nothing announced it", async () => {
    const size = 32 * MiB
    const url = server.put("/big.img", pattern(size, 3))
    server.ignoreRange = true
    server.acceptRanges = undefined
    const outcome = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      const first = yield* Effect.result(read(s, 0, 100))
      const second = yield* Effect.result(read(s, 50_000, 100))
      return { first, second, stats: s.stats() }
    }))
    for (const r of [outcome.first, outcome.second]) {
      expect(Result.isFailure(r)).toBe(true)
      const e = (r as Result.Failure<Uint8Array, StorageError>).failure
      expect(e.reason).toBe("Unsupported")
    }
    expect(outcome.stats.bytesFetched).toBe(0)
    expect(outcome.stats.requests).toBe(2)
  })

  it("fail at open when HEAD is refused and the bytes=0-0 probe gets the whole file", async () => {
    const url = server.put("/big2.img", pattern(16 * MiB, 4))
    server.ignoreRange = true
    server.headStatus = 405
    const error = await failure(openHttp(url, small))
    expect(error.reason).toBe("Unsupported")
    expect(error.message).toContain("200")
  })

  it("serve a file of at most one block from a single 200 answer", async () => {
    const data = pattern(3000, 5)
    const url = server.put("/tiny.img", data)
    server.ignoreRange = true
    server.headStatus = 405
    server.acceptRanges = "none"
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      const a = yield* read(s, 0, 3000)
      const b = yield* read(s, 2000, 2000)
      return { a, b, stats: s.stats() }
    }))
    expectSame(got.a, data)
    expectSame(got.b.subarray(0, 1000), data.subarray(2000))
    expect(got.b.subarray(1000).every((x) => x === 0)).toBe(true)
    expect(got.stats.requests).toBe(2)
  })
})

describe("retries and timeouts", () => {
  const data = pattern(200_000, 6)

  it("retries 503, 500, 429 (with Retry-After) and connection resets, then succeeds", async () => {
    const url = server.put("/flaky.img", data)
    server.faults = [{ kind: "status", status: 503 }, { kind: "reset" }]
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, retries: 5 })
      const afterOpen = s.stats()
      server.faults = [
        { kind: "status", status: 503 },
        { kind: "reset" },
        { kind: "status", status: 429, retryAfter: "0" },
        { kind: "status", status: 500 },
        { kind: "resetBody" }
      ]
      const bytes = yield* read(s, 10_000, 50_000)
      return { afterOpen, bytes, stats: s.stats() }
    }))
    expect(got.afterOpen).toMatchObject({ requests: 3, retries: 2 })
    expectSame(got.bytes, data.subarray(10_000, 60_000))
    expect(got.stats.retries).toBe(7)
    expect(got.stats.requests).toBe(9)
    expect(server.requests("/flaky.img").map((r) => r.status)).toEqual([503, 0, 200, 503, 0, 429, 500, 206, 206])
  })

  it("gives up after the configured number of retries with an Io error", async () => {
    const url = server.put("/down.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, retries: 2 })
      server.faults = Array.from({ length: 5 }, () => ({ kind: "status", status: 503 }) as const)
      const result = yield* Effect.result(read(s, 0, 10))
      return { result, stats: s.stats() }
    }))
    const error = (got.result as Result.Failure<Uint8Array, StorageError>).failure
    expect(error.reason).toBe("Io")
    expect(error.message).toContain("503")
    expect(error.message).toContain("gave up after 3 attempts")
    expect(got.stats.requests).toBe(1 + 3)
  })

  it("does not retry other 4xx answers", async () => {
    const url = server.put("/bad.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      server.faults = [{ kind: "status", status: 400 }, { kind: "status", status: 404 }]
      const first = yield* Effect.result(read(s, 0, 10))
      const second = yield* Effect.result(read(s, 0, 10))
      return { first, second, stats: s.stats() }
    }))
    expect((got.first as Result.Failure<Uint8Array, StorageError>).failure.reason).toBe("Io")
    expect((got.second as Result.Failure<Uint8Array, StorageError>).failure.reason).toBe("NotFound")
    expect(got.stats.retries).toBe(0)
    expect(got.stats.requests).toBe(3)
  })

  it("aborts a request that sends nothing within the timeout and retries it", async () => {
    const url = server.put("/slow.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, timeoutMs: 150 })
      server.faults = [{ kind: "delay", ms: 1000 }, { kind: "stallBody", ms: 1000 }]
      const started = Date.now()
      const bytes = yield* read(s, 0, 20_000)
      return { bytes, stats: s.stats(), elapsed: Date.now() - started }
    }))
    expectSame(got.bytes, data.subarray(0, 20_000))
    expect(got.stats.retries).toBe(2)
    expect(got.elapsed).toBeLessThan(900)
  })

  it("fails with a timeout message when every attempt stalls", async () => {
    const url = server.put("/stuck.img", data)
    const error = await failure(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, timeoutMs: 100, retries: 1 })
      server.faults = [{ kind: "delay", ms: 600 }, { kind: "delay", ms: 600 }]
      return yield* read(s, 0, 10)
    }))
    expect(error.reason).toBe("Io")
    expect(error.message).toContain("no response for 100 ms")
    expect(error.message).toContain("gave up after 2 attempts")
  })
})

describe("remote changes", () => {
  const v1 = pattern(100_000, 7)
  const v2 = pattern(100_000, 8)

  const changedDuringSession = (path: string, options: HttpStorageOptions, prepare: () => void) =>
    run(Effect.gen(function* () {
      const url = server.put(path, v1)
      prepare()
      const s = yield* openHttp(url, { ...small, maxReadahead: 0, ...options })
      expectSame(yield* read(s, 0, 4096), v1.subarray(0, 4096))
      server.put(path, v2)
      const changed = yield* Effect.result(read(s, 50_000, 100))
      const cachedAfter = yield* Effect.result(read(s, 0, 100))
      return { changed, cachedAfter, log: server.requests(path) }
    }))

  const errorOf = (r: Result.Result<Uint8Array, StorageError>) => {
    expect(Result.isFailure(r)).toBe(true)
    return (r as Result.Failure<Uint8Array, StorageError>).failure
  }

  it("sends If-Match with the ETag and maps 412 to RemoteChanged, then refuses every read", async () => {
    const got = await changedDuringSession("/c1.img", {}, () => undefined)
    const e = errorOf(got.changed)
    expect(e.reason).toBe("RemoteChanged")
    expect(e.message).toContain("412")
    expect(errorOf(got.cachedAfter).reason).toBe("RemoteChanged")
    const gets = got.log.filter((r) => r.method === "GET")
    expect(gets.every((r) => r.ifMatch !== undefined && r.ifMatch === gets[0]!.ifMatch)).toBe(true)
  })

  it("compares the ETag of every answer when If-Match is off or ignored", async () => {
    for (const [path, options, prepare] of [
      ["/c2.img", { conditionalRequests: false }, () => undefined],
      ["/c3.img", {}, () => { server.honourIfMatch = false }]
    ] as const) {
      const got = await changedDuringSession(path, options, prepare)
      const e = errorOf(got.changed)
      expect(e.reason).toBe("RemoteChanged")
      expect(e.message).toMatch(/ETag changed from "v\d+-100000" to "v\d+-100000"/)
      if (path === "/c2.img") expect(got.log.every((r) => r.ifMatch === undefined)).toBe(true)
    }
  })

  it("compares Last-Modified when there is no ETag", async () => {
    const got = await changedDuringSession("/c4.img", {}, () => { server.sendEtag = false })
    const e = errorOf(got.changed)
    expect(e.reason).toBe("RemoteChanged")
    expect(e.message).toContain("Last-Modified changed")
  })

  it("notices a size change in Content-Range without any validator", async () => {
    const got = await run(Effect.gen(function* () {
      server.sendEtag = false
      server.sendLastModified = false
      const url = server.put("/c5.img", v1)
      const s = yield* openHttp(url, { ...small, maxReadahead: 0 })
      yield* read(s, 0, 10)
      server.put("/c5.img", pattern(200_000, 9))
      return yield* Effect.result(read(s, 8192, 10))
    }))
    const e = errorOf(got)
    expect(e.reason).toBe("RemoteChanged")
    expect(e.message).toContain("size changed from 100000 to 200000")
  })

  it("reports a file that shrank below a read (416) as RemoteChanged", async () => {
    const got = await run(Effect.gen(function* () {
      server.sendEtag = false
      server.sendLastModified = false
      const url = server.put("/c6.img", v1)
      const s = yield* openHttp(url, { ...small, maxReadahead: 0 })
      server.put("/c6.img", pattern(10_000, 9))
      return yield* Effect.result(read(s, 90_000, 10))
    }))
    expect(errorOf(got).reason).toBe("RemoteChanged")
  })
})

describe("block cache", () => {
  const data = pattern(1 * MiB + 1234, 10)

  it("merges the missing blocks of one read into one Range request", async () => {
    const url = server.put("/m.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 0 })
      expectSame(yield* read(s, 100, 5 * 4096), data.subarray(100, 100 + 5 * 4096))
      const afterFirst = s.stats()
      expectSame(yield* read(s, 12 * 4096 + 7, 1000), data.subarray(12 * 4096 + 7, 12 * 4096 + 1007))
      expectSame(yield* read(s, 0, 16 * 4096), data.subarray(0, 16 * 4096))
      return { afterFirst, stats: s.stats() }
    }))
    const gets = server.requests("/m.img", "GET").map((r) => r.range)
    expect(gets).toEqual(["bytes=0-24575", "bytes=49152-53247", "bytes=24576-49151", "bytes=53248-65535"])
    expect(got.afterFirst.cacheMisses).toBe(6)
    expect(got.stats.cacheHits).toBe(7)
    expect(got.stats.bytesFetched).toBe(16 * 4096)
  })

  it("splits a large read into requests of at most maxRequestBytes", async () => {
    const url = server.put("/split.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxRequestBytes: 64 * KiB })
      return yield* read(s, 0, data.length + 100)
    }))
    expectSame(got.subarray(0, data.length), data)
    expect(got.subarray(data.length).every((b) => b === 0)).toBe(true)
    const gets = server.requests("/split.img", "GET")
    expect(gets.length).toBe(Math.ceil(data.length / (64 * KiB)))
    expect(gets.at(-1)!.range).toBe(`bytes=${16 * 64 * KiB}-${data.length - 1}`)
  })

  it("reads ahead on sequential access with a growing window, and not on random access", async () => {
    const url = server.put("/seq.img", data)
    const seq = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 64 * KiB })
      for (let offset = 0; offset < data.length; offset += 1024) {
        const bytes = yield* read(s, offset, 1024)
        expectSame(bytes.subarray(0, data.length - offset), data.subarray(offset, offset + 1024))
      }
      return s.stats()
    }))
    const sizes = server.requests("/seq.img", "GET").map((r) => {
      const [a, b] = r.range!.slice(6).split("-").map(Number)
      return (b! - a! + 1) / 4096
    })
    // First block alone, then 1 + window blocks with the window doubling up to 16.
    expect(sizes.slice(0, 6)).toEqual([1, 2, 3, 5, 9, 17])
    expect(seq.readaheadBlocks).toBeGreaterThan(200)
    expect(seq.requests).toBe(1 + sizes.length)
    expect(sizes.length).toBeLessThan(25)

    server.log.length = 0
    const rnd = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 64 * KiB })
      for (let i = 0; i < 40; i++) {
        const offset = ((i * 7919) % 250) * 4096 + 10
        expectSame(yield* read(s, offset, 100), data.subarray(offset, offset + 100))
      }
      return s.stats()
    }))
    expect(rnd.readaheadBlocks).toBe(0)
    expect(rnd.bytesFetched).toBe(rnd.cacheMisses * 4096)
  })

  it("evicts the least recently used blocks beyond its capacity", async () => {
    const url = server.put("/lru.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, cacheBytes: 4 * 4096, maxReadahead: 0 })
      for (const b of [0, 2, 4, 6]) yield* read(s, b * 4096, 10)
      yield* read(s, 0, 10) // block 0 becomes the most recently used
      yield* read(s, 8 * 4096, 10) // evicts block 2
      const before = s.stats()
      yield* read(s, 0, 10)
      const hitStats = s.stats()
      expectSame(yield* read(s, 2 * 4096, 10), data.subarray(2 * 4096, 2 * 4096 + 10))
      return { before, hitStats, after: s.stats() }
    }))
    expect(got.before.evictions).toBe(1)
    expect(got.before.cachedBytes).toBe(4 * 4096)
    expect(got.hitStats.requests).toBe(got.before.requests)
    expect(got.after.requests).toBe(got.before.requests + 1)
    expect(server.requests("/lru.img", "GET").at(-1)!.range).toBe("bytes=8192-12287")
  })

  it("works with caching disabled", async () => {
    const url = server.put("/nocache.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, cacheBytes: 0 })
      const a = yield* read(s, 5000, 10_000)
      const b = yield* read(s, 5000, 10_000)
      return { a, b, stats: s.stats() }
    }))
    expectSame(got.a, data.subarray(5000, 15_000))
    expectSame(got.b, data.subarray(5000, 15_000))
    expect(got.stats.requests).toBe(3)
    expect(got.stats.cachedBytes).toBe(0)
  })

  it("shares one request among concurrent reads of the same blocks", async () => {
    const url = server.put("/dedup.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 0 })
      server.latencyMs = 50
      const results = yield* Effect.all(
        Array.from({ length: 10 }, (_, i) => read(s, 4096 + i * 100, 5000)),
        { concurrency: "unbounded" }
      )
      return { results, stats: s.stats() }
    }))
    got.results.forEach((bytes, i) => expectSame(bytes, data.subarray(4096 + i * 100, 4096 + i * 100 + 5000)))
    expect(server.requests("/dedup.img", "GET").map((r) => r.range)).toEqual(["bytes=4096-12287"])
    expect(got.stats.inflightHits).toBe(18)
  })

  it("keeps a shared request going when the read that started it is interrupted", async () => {
    const url = server.put("/interrupt.img", data)
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 0 })
      server.latencyMs = 100
      const first = yield* Effect.forkChild(read(s, 0, 100))
      yield* Effect.sleep(20)
      const second = yield* Effect.forkChild(read(s, 50, 100))
      yield* Effect.sleep(20)
      yield* Fiber.interrupt(first)
      const bytes = yield* Fiber.join(second)
      return { bytes, stats: s.stats() }
    }))
    expectSame(got.bytes, data.subarray(50, 150))
    expect(got.stats.requests).toBe(2)
  })

  it("bounds concurrent requests", async () => {
    const url = server.put("/conc.img", data)
    let inFlight = 0
    let peak = 0
    const countingFetch = async (input: string, init: RequestInit) => {
      inFlight++
      peak = Math.max(peak, inFlight)
      try {
        return await fetch(input, init)
      } finally {
        inFlight--
      }
    }
    await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { ...small, maxReadahead: 0, maxConcurrentRequests: 2, fetch: countingFetch })
      server.latencyMs = 20
      yield* Effect.all(Array.from({ length: 12 }, (_, i) => read(s, i * 3 * 4096, 100)), { concurrency: "unbounded" })
    }))
    expect(peak).toBe(2)
    expect(server.requests("/conc.img", "GET").length).toBe(12)
  })
})

describe("BlockStorage contract", () => {
  const data = pattern(10_000, 11)

  it("reads zeros past EOF, rejects writes with ReadOnly, flushes", async () => {
    const url = server.put("/ro.img", data)
    await run(Effect.gen(function* () {
      const s = yield* openHttp(url, small)
      const tail = yield* read(s, 9_000, 3_000)
      expectSame(tail.subarray(0, 1000), data.subarray(9000))
      expect(tail.subarray(1000).every((b) => b === 0)).toBe(true)
      const far = yield* read(s, 2 ** 40, 100)
      expect(far.every((b) => b === 0)).toBe(true)
      for (const op of [s.write(0, new Uint8Array(1)), s.resize(0), s.discard(0, 10)]) {
        const r = yield* Effect.result(op)
        expect(Result.isFailure(r) && r.failure.reason).toBe("ReadOnly")
      }
      yield* s.flush()
      expect(yield* s.size()).toBe(10_000)
    }))
  })

  it("fails every operation with Closed after the scope closes and cancels pending requests", async () => {
    const url = server.put("/closed.img", data)
    const got = await Effect.runPromise(Effect.gen(function* () {
      const leaked = yield* Effect.scoped(openHttp(url, small))
      const read1 = yield* Effect.result(read(leaked, 0, 10))
      const size = yield* Effect.result(leaked.size())
      return { read1, size }
    }))
    expect(Result.isFailure(got.read1) && got.read1.failure.reason).toBe("Closed")
    expect(Result.isFailure(got.size) && got.size.failure.reason).toBe("Closed")

    const pending = await Effect.runPromise(Effect.gen(function* () {
      server.latencyMs = 200
      const fiber = yield* Effect.forkDetach(Effect.scoped(Effect.gen(function* () {
        const s = yield* openHttp(url, small)
        return yield* read(s, 0, 10)
      })))
      yield* Effect.sleep(300)
      yield* Fiber.interrupt(fiber)
      return yield* Fiber.await(fiber)
    }))
    expect(Exit.hasInterrupts(pending)).toBe(true)
  })

  it("provides BlockStorage through HttpStorage.layer", async () => {
    const url = server.put("/layer.img", data)
    const got = await Effect.runPromise(Effect.gen(function* () {
      const storage = yield* BlockStorage
      return yield* read(storage, 0, 100)
    }).pipe(Effect.provide(HttpStorage.layer(url, small))))
    expectSame(got, data.subarray(0, 100))
  })
})

describe("HttpStorageOpener", () => {
  it("resolves names against the referencing URL", () => {
    const opener = HttpStorageOpener.make()
    expect(opener.resolve("http://h/a/b/overlay.qcow2", "base.qcow2")).toBe("http://h/a/b/base.qcow2")
    expect(opener.resolve("http://h/a/b/overlay.qcow2", "../base.qcow2")).toBe("http://h/a/base.qcow2")
    expect(opener.resolve("http://h/a/b/overlay.qcow2", "/x/base.qcow2")).toBe("http://h/x/base.qcow2")
    expect(opener.resolve("http://h/a/overlay.qcow2", "https://cdn/base.qcow2")).toBe("https://cdn/base.qcow2")
    expect(opener.resolve("http://h/a/overlay.qcow2", "with space.img")).toBe("http://h/a/with%20space.img")
  })

  it("opens read-only and refuses writable or creating opens", async () => {
    const data = pattern(5000, 12)
    server.put("/dir/base.img", data)
    const got = await Effect.runPromise(Effect.scoped(Effect.gen(function* () {
      const opener = yield* StorageOpener
      const name = opener.resolve(server.url("/dir/overlay.img"), "base.img")
      const s = yield* opener.open(name, { readOnly: true })
      const bytes = yield* read(s, 0, 5000)
      const writable = yield* Effect.result(opener.open(name, { readOnly: false }))
      const create = yield* Effect.result(opener.open(name, { readOnly: true, create: true }))
      return { bytes, writable, create }
    })).pipe(Effect.provide(HttpStorageOpener.layer(small))))
    expectSame(got.bytes, data)
    expect(Result.isFailure(got.writable) && got.writable.failure.reason).toBe("ReadOnly")
    expect(Result.isFailure(got.create) && got.create.failure.reason).toBe("ReadOnly")
  })
})

describe("cross-origin limits", () => {
  it("trusts a 206 without a visible Content-Range when HEAD gave the size", async () => {
    const data = pattern(30_000, 13)
    const url = server.put("/cors.img", data)
    server.sendContentRange = false
    server.acceptRanges = undefined
    server.sendEtag = false
    const got = await run(Effect.flatMap(openHttp(url, small), (s) => read(s, 5000, 20_000)))
    expectSame(got, data.subarray(5000, 25_000))
  })

  it("explains a size hidden by CORS when HEAD is refused", async () => {
    const url = server.put("/cors2.img", pattern(30_000, 13))
    server.sendContentRange = false
    server.headStatus = 405
    const error = await failure(openHttp(url, small))
    expect(error.reason).toBe("Unsupported")
    expect(error.message).toContain("Access-Control-Expose-Headers")
  })
})
