/**
 * The HTTP backend against a real nginx (Debian nginx-light): the shared
 * conformance suite, request counts cross-checked with nginx's access log,
 * and If-Match handling of a replaced file. Fails (does not skip) when
 * nginx is not installed.
 */
import { blockStorageConformance } from "@qcow2/storage/testing"
import type { StorageError } from "@qcow2/storage"
import { Effect, Result, type Scope } from "effect"
import { utimes } from "node:fs/promises"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { openHttp, type HttpBlockStorage, type HttpStats } from "../src/index.js"
import { Nginx } from "./nginx.js"
import { pattern } from "./server.js"

const KiB = 1024
const MiB = 1024 * KiB
const nginx = new Nginx()

beforeAll(() => nginx.start(), 30_000)
afterAll(() => nginx.stop())

let files = 0
const publish = (content: Uint8Array) =>
  Effect.flatMap(Effect.promise(() => nginx.put(`conformance-${++files}.img`, content)), (url) => openHttp(url))

blockStorageConformance("http via nginx", () => publish(new Uint8Array(0)), { readOnly: true, makeWithContent: publish })
blockStorageConformance(
  "http via nginx, 4 KiB blocks",
  () => publish(new Uint8Array(0)),
  { readOnly: true, makeWithContent: (content) => Effect.flatMap(Effect.promise(() => nginx.put(`c4k-${++files}.img`, content)), (url) => openHttp(url, { blockSize: 4096, cacheBytes: 64 * KiB })) }
)

const run = <A>(effect: Effect.Effect<A, StorageError, Scope.Scope>): Promise<A> => Effect.runPromise(Effect.scoped(effect))

const readInto = (s: HttpBlockStorage, offset: number, length: number) =>
  Effect.suspend(() => {
    const into = new Uint8Array(length)
    return Effect.as(s.read(offset, into), into)
  })

interface Figure {
  readonly what: string
  readonly stats: HttpStats
  readonly log: Array<string>
}

describe("nginx: request counts with default options", () => {
  const image = pattern(64 * MiB + 12345, 21)
  let url = ""
  const figures: Array<Figure> = []

  beforeAll(async () => {
    url = await nginx.put("image.raw", image)
  })

  afterAll(() => {
    const table = figures.map((f) =>
      `${f.what.padEnd(48)} requests=${f.stats.requests} bytesFetched=${f.stats.bytesFetched} (${(f.stats.bytesFetched / KiB).toFixed(0)} KiB)`
    )
    console.log(`HTTP cost with default options (nginx):\n${table.join("\n")}`)
  })

  const measure = async (what: string, reads: ReadonlyArray<readonly [number, number]>) => {
    await nginx.clearLog()
    const stats = await run(Effect.gen(function* () {
      const s = yield* openHttp(url)
      for (const [offset, length] of reads) {
        const bytes = yield* readInto(s, offset, length)
        expect(Buffer.compare(bytes, image.subarray(offset, offset + length))).toBe(0)
      }
      return s.stats()
    }))
    const log = await nginx.accessLog(stats.requests)
    figures.push({ what, stats, log })
    // Every request the backend counts reached nginx, and nothing else did.
    expect(log.length).toBe(stats.requests)
    const bodyBytes = log.reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0)
    expect(bodyBytes).toBe(stats.bytesFetched)
    return { stats, log }
  }

  it("open + read the first 64 KiB: HEAD + one 256 KiB block", async () => {
    const { stats, log } = await measure("open + read(0, 64 KiB)", [[0, 64 * KiB]])
    expect(stats.requests).toBe(2)
    expect(stats.bytesFetched).toBe(256 * KiB)
    expect(log[0]).toMatch(/^HEAD \/image\.raw "-" "-" 200 0$/)
    expect(log[1]).toMatch(/^GET \/image\.raw "bytes=0-262143" "\\x22[0-9a-f]+-[0-9a-f]+\\x22" 206 262144$/)
  })

  it("open + read the first 1 MiB in one read: HEAD + one 1 MiB request", async () => {
    const { stats } = await measure("open + read(0, 1 MiB)", [[0, MiB]])
    expect(stats.requests).toBe(2)
    expect(stats.bytesFetched).toBe(MiB)
  })

  it("open + read the first 1 MiB as 16 sequential 64 KiB reads: readahead keeps it to 3 GETs", async () => {
    const reads = Array.from({ length: 16 }, (_, i) => [i * 64 * KiB, 64 * KiB] as const)
    const { stats } = await measure("open + 16 x read(i * 64 KiB, 64 KiB)", reads)
    expect(stats.requests).toBe(4)
    expect(stats.bytesFetched).toBe(1536 * KiB)
    expect(stats.cacheHits).toBe(16 - 3)
  })

  it("open + read 64 MiB sequentially in 64 KiB reads: the window grows to 8 MiB", async () => {
    const reads = Array.from({ length: 1024 }, (_, i) => [i * 64 * KiB, 64 * KiB] as const)
    const { stats, log } = await measure("open + 1024 x read(i * 64 KiB, 64 KiB) (64 MiB)", reads)
    expect(stats.requests).toBeLessThan(20)
    const sizes = log.slice(1).map((line) => Number(line.split(" ").at(-1)))
    expect(Math.max(...sizes)).toBe(8 * MiB + 256 * KiB)
  })
})

describe("nginx: remote changes", () => {
  it("gets 412 for If-Match after the file is replaced, and reports RemoteChanged", async () => {
    await nginx.clearLog()
    const url = await nginx.put("changing.img", pattern(2 * MiB, 22))
    const got = await run(Effect.gen(function* () {
      const s = yield* openHttp(url, { maxReadahead: 0 })
      yield* readInto(s, 0, 100)
      yield* Effect.promise(async () => {
        await nginx.put("changing.img", pattern(2 * MiB, 23))
        const later = new Date(Date.now() + 60_000)
        await utimes(join(nginx.root, "changing.img"), later, later)
      })
      return yield* Effect.result(readInto(s, MiB, 100))
    }))
    expect(Result.isFailure(got)).toBe(true)
    const error = (got as Result.Failure<Uint8Array, StorageError>).failure
    expect(error.reason).toBe("RemoteChanged")
    expect(error.message).toContain("412")
    // The HEAD of the open, the first read's GET and the refused one.
    const log = await nginx.accessLog(3)
    expect(log.at(-1)).toMatch(/ 412 \d+$/)
  })

  it("reports a missing file as NotFound", async () => {
    const result = await Effect.runPromise(Effect.scoped(Effect.result(openHttp(nginx.url("nope.img")))))
    expect(Result.isFailure(result) && result.failure.reason).toBe("NotFound")
  })
})
