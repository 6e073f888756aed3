import { Effect, Exit, Fiber } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { CompressionError } from "../src/index.js"
import type { ClusterKernels } from "../src/internal/codec.js"
import type { JobOutcome } from "../src/internal/poolJobs.js"
import { WorkerPool } from "../src/internal/workerPool.js"
import { makeCompressionPool } from "../src/node.js"
import { expectSameBytes, makeCodecs, periodicBytes, randomBytes, textBytes } from "./fixtures.js"

/** NodeClusterCodec's kernels, the reference for the pool's bytes (with native zstd, as the pool runs by default), and with the wasm zstd. */
let node: ClusterKernels
let nodeWasm: ClusterKernels
beforeAll(async () => {
  const codecs = await makeCodecs()
  node = codecs[0][1]
  nodeWasm = codecs[1][1]
})

const mixedClusters = (count: number, size: number): Array<Uint8Array> =>
  Array.from({ length: count }, (_, i) =>
    i % 4 === 0
      ? textBytes(size, i + 1)
      : i % 4 === 1
        ? randomBytes(size, i + 1)
        : i % 4 === 2
          ? new Uint8Array(size)
          : periodicBytes(size, 2048, i)
  )

describe("makeCompressionPool", () => {
  it.each(["native", "wasm"] as const)("gives the same bytes as NodeClusterCodec for both codecs, in input order (%s zstd)", async (zstd) => {
    const reference = zstd === "native" ? node : nodeWasm
    const clusters = mixedClusters(48, 65536)
    const results = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 2, zstd })
          expect(pool.workers).toBe(2)
          return yield* Effect.forEach(
            clusters.flatMap((c) => [
              [0, c],
              [1, c]
            ] as const),
            ([type, cluster]) => pool.compress(type, cluster),
            { concurrency: 12 }
          )
        })
      )
    )
    clusters.forEach((cluster, i) => {
      for (const type of [0, 1] as const) {
        const expected = reference.compress(type, cluster)
        const got = results[i * 2 + type]
        if (expected === undefined) expect(got).toBeUndefined()
        else expectSameBytes(got, expected, `cluster ${i} type ${type}`)
      }
    })
    expect(results.filter((r) => r === undefined).length).toBe(24) // the random clusters, both codecs
  })

  it("keeps input order when workers finish out of order", async () => {
    const big = textBytes(2 * 1024 * 1024, 5)
    const small = new Uint8Array(2 * 1024 * 1024)
    const inputs = [big, small, big, small, small, small]
    const completed: Array<number> = []
    const results = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 2, maxInFlightPerWorker: 2 })
          return yield* Effect.forEach(
            inputs,
            (cluster, i) => pool.compress(0, cluster, 6).pipe(Effect.tap(() => Effect.sync(() => completed.push(i)))),
            { concurrency: "unbounded" }
          )
        })
      )
    )
    expect(completed).not.toEqual([0, 1, 2, 3, 4, 5])
    inputs.forEach((input, i) => expectSameBytes(results[i], node.compress(0, input)!, `result ${i}`))
  })

  it("wasm zstd: copies the caller's cluster unless transfer is requested for a whole buffer; deflate and native zstd never detach", async () => {
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 1, zstd: "wasm" })
          const kept = textBytes(4096)
          yield* pool.compress(0, kept)
          expect(kept.byteLength).toBe(4096)

          const region = textBytes(65536)
          const view = region.subarray(4096, 8192)
          yield* pool.compress(1, view, undefined, { transfer: true })
          expect(region.byteLength).toBe(65536) // a view is copied, never detaches its buffer

          const owned = textBytes(4096)
          const expected = nodeWasm.compress(1, owned)!
          const result = yield* pool.compress(1, owned, undefined, { transfer: true })
          expect(owned.byteLength).toBe(0) // detached: the memory went to the worker
          expectSameBytes(result, expected)

          const read = textBytes(4096)
          const deflated = yield* pool.compress(0, read, undefined, { transfer: true })
          expect(read.byteLength).toBe(4096) // deflate reads the cluster in place, on libuv's threads
          expectSameBytes(deflated, node.compress(0, read)!)
        })
      )
    )
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 1, zstd: "native" })
          const owned = textBytes(4096)
          const expected = node.compress(1, owned)!
          const result = yield* pool.compress(1, owned, undefined, { transfer: true })
          expect(owned.byteLength).toBe(4096) // libzstd reads the cluster in place, on libuv's threads
          expectSameBytes(result, expected)
          expect(result!.buffer.byteLength).toBe(result!.length) // the result holds only its own bytes
        })
      )
    )
  })

  it("deflate: gives NodeClusterCodec's bytes when the level changes between clusters (reused zlib streams)", async () => {
    const clusters = mixedClusters(12, 4096)
    const levels = [1, 9, 6, 0]
    const results = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 1 })
          return yield* Effect.forEach(clusters, (cluster, i) => pool.compress(0, cluster, levels[i % levels.length]), { concurrency: 3 })
        })
      )
    )
    clusters.forEach((cluster, i) => {
      const expected = node.compress(0, cluster, { level: levels[i % levels.length] })
      if (expected === undefined) expect(results[i]).toBeUndefined()
      else expectSameBytes(results[i], expected, `cluster ${i}`)
    })
  })

  it.each(["native", "wasm"] as const)("compressClusters: each cluster's NodeClusterCodec bytes, packed one after another, the caller's data (shared or not) untouched, right again in reused memory (%s zstd)", async (zstd) => {
    const reference = zstd === "native" ? node : nodeWasm
    for (const [size, memory] of [
      [512, "ArrayBuffer"],
      [65536, "ArrayBuffer"],
      [4096, "SharedArrayBuffer"]
    ] as const) {
      const clusters = mixedClusters(13, size)
      const data = memory === "ArrayBuffer" ? new Uint8Array(clusters.length * size) : new Uint8Array(new SharedArrayBuffer(clusters.length * size))
      clusters.forEach((c, i) => data.set(c, i * size))
      const before = data.slice()
      for (const type of [0, 1] as const) {
        const seen = await Effect.runPromise(
          Effect.scoped(
            Effect.gen(function* () {
              const pool = yield* makeCompressionPool({ workers: 2, zstd })
              const first = yield* pool.compressClusters(type, data, size, undefined, (results) =>
                Effect.sync(() => results.map((r) => (r === undefined ? undefined : { bytes: r.slice(), buffer: r.buffer, offset: r.byteOffset })))
              )
              // The same request again: it reuses the first one's memory, and the results are still right.
              const second = yield* pool.compressClusters(type, data, size, undefined, (results) => Effect.sync(() => results.map((r) => r?.slice())))
              return { first, second }
            })
          )
        )
        clusters.forEach((cluster, i) => {
          const expected = reference.compress(type, cluster)
          for (const got of [seen.first[i]?.bytes, seen.second[i]]) {
            if (expected === undefined) expect(got).toBeUndefined()
            else expectSameBytes(got, expected, `size ${size} ${memory} type ${type} cluster ${i}`)
          }
        })
        // Packed: each compressed cluster starts where the previous one ended, in one buffer.
        const packed = seen.first.filter((r) => r !== undefined)
        for (let k = 1; k < packed.length; k++) {
          expect(packed[k]!.buffer).toBe(packed[0]!.buffer)
          expect(packed[k]!.offset).toBe(packed[k - 1]!.offset + packed[k - 1]!.bytes.length)
        }
        expectSameBytes(data, before, "the caller's data")
      }
    }
  })

  it.each([0, 1] as const)("compressClusters (type %i): a request interrupted while its clusters run leaves the next requests' bytes right", async (type) => {
    const size = 65536
    const first = mixedClusters(24, size)
    const second = mixedClusters(24, size).reverse()
    const pack = (clusters: ReadonlyArray<Uint8Array>) => {
      const data = new Uint8Array(clusters.length * size)
      clusters.forEach((c, i) => data.set(c, i * size))
      return data
    }
    const got = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 2 })
          const results: Array<ReadonlyArray<Uint8Array | undefined>> = []
          for (let round = 0; round < 4; round++) {
            // Interrupted while its jobs run on libuv's threads: they still write into its output buffer.
            const fiber = yield* Effect.forkChild(pool.compressClusters(type, pack(first), size, undefined, () => Effect.void))
            yield* Effect.sleep(1)
            yield* Fiber.interrupt(fiber)
            results.push(yield* pool.compressClusters(type, pack(second), size, undefined, (r) => Effect.sync(() => r.map((x) => x?.slice()))))
          }
          return results
        })
      )
    )
    for (const results of got) {
      second.forEach((cluster, i) => {
        const expected = node.compress(type, cluster)
        if (expected === undefined) expect(results[i]).toBeUndefined()
        else expectSameBytes(results[i], expected, `cluster ${i}`)
      })
    }
  })

  it("compressClusters: a request larger than one worker's part (2 MiB) gives the same bytes, in order", async () => {
    const size = 65536
    const clusters = mixedClusters(40, size)
    const data = new Uint8Array(clusters.length * size)
    clusters.forEach((c, i) => data.set(c, i * size))
    const got = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 2 })
          return yield* pool.compressClusters(1, data, size, undefined, (results) => Effect.sync(() => results.map((r) => r?.slice())))
        })
      )
    )
    expect(got.length).toBe(40)
    clusters.forEach((cluster, i) => {
      const expected = node.compress(1, cluster)
      if (expected === undefined) expect(got[i]).toBeUndefined()
      else expectSameBytes(got[i], expected, `cluster ${i}`)
    })
  })

  it("compressClusters: fails with CompressionError for a partial cluster, a bad level, and after its scope closed", async () => {
    const { pool, partial, badLevel } = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 1 })
          const partial = yield* Effect.flip(pool.compressClusters(1, new Uint8Array(4096 + 512), 4096, undefined, () => Effect.void))
          const badLevel = yield* Effect.flip(pool.compressClusters(0, new Uint8Array(8192), 4096, 10, () => Effect.void))
          return { pool, partial, badLevel }
        })
      )
    )
    expect(partial).toBeInstanceOf(CompressionError)
    expect(partial.reason).toBe("Unsupported")
    expect(badLevel.reason).toBe("Unsupported")
    for (const type of [0, 1] as const) {
      const exit = await Effect.runPromiseExit(pool.compressClusters(type, textBytes(8192), 4096, undefined, () => Effect.void))
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) expect(String(exit.cause)).toMatch(/closed/)
    }
  })

  it("fails with CompressionError on bad arguments, and after its scope closed", async () => {
    const { pool, badLevel, badSize } = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makeCompressionPool({ workers: 1 })
          const badLevel = yield* Effect.flip(pool.compress(0, new Uint8Array(512), 42))
          const badSize = yield* Effect.flip(pool.compress(1, new Uint8Array(3000)))
          return { pool, badLevel, badSize }
        })
      )
    )
    expect(badLevel).toBeInstanceOf(CompressionError)
    expect(badLevel.reason).toBe("Unsupported")
    expect(badSize.reason).toBe("Unsupported")
    const exit = await Effect.runPromiseExit(pool.compress(0, textBytes(512)))
    expect(Exit.isFailure(exit)).toBe(true)
    if (Exit.isFailure(exit)) expect(String(exit.cause)).toMatch(/closed/)
  })
})

describe("WorkerPool", () => {
  const run = (pool: WorkerPool, type: number): Promise<JobOutcome> =>
    new Promise((resolve) => pool.submit(type, 0, new Uint8Array(8), resolve))

  it("fails the jobs of a worker that dies, replaces it, and keeps serving", async () => {
    const source = `
      const { parentPort } = require("node:worker_threads");
      parentPort.on("message", (jobs) => {
        if (jobs.some((job) => job.type === 99)) process.exit(7);
        parentPort.postMessage(jobs.map((job) => ({ id: job.id, ok: true, result: job.data })));
      });`
    const pool = new WorkerPool(source, undefined, 1, 2)
    try {
      expect((await run(pool, 0)).ok).toBe(true)
      const crashed = await run(pool, 99)
      expect(crashed.ok).toBe(false)
      if (!crashed.ok) expect(crashed.message).toMatch(/code 7/)
      expect((await run(pool, 0)).ok).toBe(true)
    } finally {
      await pool.close()
    }
  })

  it("gives up after workers keep dying before answering", async () => {
    const pool = new WorkerPool(`process.exit(3)`, undefined, 1, 1)
    try {
      let last: JobOutcome = { ok: true, result: undefined }
      for (let i = 0; i < 10 && !(!last.ok && /keep failing/.test(last.message)); i++) last = await run(pool, 0)
      expect(last.ok).toBe(false)
      if (!last.ok) expect(last.message).toMatch(/keep failing/)
    } finally {
      await pool.close()
    }
  })
})
