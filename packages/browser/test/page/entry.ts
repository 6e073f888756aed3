/**
 * The test page's script (bundled by test/harness.ts with esbuild under the
 * `browser` condition, `vitest` mapped to vitest-shim.ts). It exposes on
 * `window.qcow2Test` what test/chromium.test.ts drives through
 * page.evaluate: the storage conformance suite against IndexedDB and Blob
 * stores, the Web Worker compression pool, the @qcow2/browser API, and the
 * IndexedDB measurements of the bench.
 */
import { Effect } from "effect"
import { CompressionType, PortableClusterCodec } from "@qcow2/compress"
import { makeRuntimeCompressionPool, runtime } from "@qcow2/compress/runtime"
import { blockStorageConformance, patternBytes } from "@qcow2/storage/testing"
import { makeBlobStorage } from "@qcow2/storage-blob"
import { DEFAULT_CHUNK_SIZE, deleteIdbStore, openIdbStorage } from "@qcow2/storage-idb"
import * as api from "../../src/index.js"
import { mixedClusters } from "./clusters.js"
import { runCollected } from "./vitest-shim.js"

let counter = 0
const idbStore = (chunkSize: number) => openIdbStorage("conformance", `s${Date.now()}-${counter++}`, { readOnly: false, create: true, chunkSize })

/** Runs the shared BlockStorage suite against IndexedDB (two chunk sizes) and Blob stores. */
const conformance = () => {
  blockStorageConformance("IndexedDB (Chromium), 4 KiB chunks", () => idbStore(4096))
  blockStorageConformance(`IndexedDB (Chromium), default chunks`, () => idbStore(DEFAULT_CHUNK_SIZE))
  blockStorageConformance("Blob (Chromium)", () => Effect.succeed(makeBlobStorage(new Blob([new Uint8Array(10)]))), {
    readOnly: true,
    makeWithContent: (content) => Effect.succeed(makeBlobStorage(new Blob([content.slice()])))
  })
  return runCollected()
}

/**
 * Compresses clusters on the Web Worker pool (both types, several sizes)
 * and checks each result: the same bytes as the page's portable codec, and
 * decompressing to the input. Returns what it checked.
 */
const poolRoundTrip = () =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const codec = yield* PortableClusterCodec.make
        const pool = yield* makeRuntimeCompressionPool({ workers: 2 })
        const report = { runtime, workers: pool.workers, clusters: 0, compressed: 0, mismatches: [] as Array<string> }
        for (const type of [CompressionType.Deflate, CompressionType.Zstd] as const) {
          for (const size of [512, 4096, 65536, 2 * 1024 * 1024]) {
            const clusters = mixedClusters(size === 2 * 1024 * 1024 ? 2 : 8, size)
            const results = yield* Effect.forEach(clusters, (c, i) =>
              // Odd clusters are handed over (a copy, as transferring detaches it) instead of copied by the pool.
              i % 2 === 1 ? pool.compress(type, c.slice(), undefined, { transfer: true }) : pool.compress(type, c), { concurrency: 8 })
            for (const [i, result] of results.entries()) {
              report.clusters++
              const expected = yield* codec.compress(type, clusters[i]!)
              const what = `type ${type}, ${size} B, cluster ${i}`
              if ((result === undefined) !== (expected === undefined)) report.mismatches.push(`${what}: pool ${result === undefined ? "did not" : "did"} compress`)
              if (result === undefined || expected === undefined) continue
              report.compressed++
              if (result.length !== expected.length || result.some((b, j) => b !== expected[j])) report.mismatches.push(`${what}: bytes differ from the portable codec`)
              const out = new Uint8Array(size)
              yield* codec.decompress(type, result, out)
              if (out.some((b, j) => b !== clusters[i]![j])) report.mismatches.push(`${what}: does not decompress to the input`)
            }
          }
        }
        return report
      })
    )
  )

/** Bytes as base64 (how the page hands files to the test). */
const toBase64 = (bytes: Uint8Array): string => {
  let text = ""
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(text)
}

/** A WritableStream that keeps what it receives, as an export target. */
const collector = () => {
  const chunks: Array<Uint8Array> = []
  const stream = new WritableStream<Uint8Array>({ write: (chunk) => void chunks.push(chunk) })
  const bytes = () => {
    const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0))
    let at = 0
    for (const c of chunks) {
      out.set(c, at)
      at += c.length
    }
    return out
  }
  return { stream, bytes }
}

/** Seconds of wall time of `body`. */
const timed = async (body: () => Promise<void>): Promise<number> => {
  const start = performance.now()
  await body()
  return (performance.now() - start) / 1000
}

/** Random 4 KiB-aligned offsets in a store of `size` bytes, from `seed`. */
const randomOffsets = (size: number, seed: number) => {
  let s = seed
  return () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0
    return (s % (size / 4096)) * 4096
  }
}

type IdbStore = Effect.Success<ReturnType<typeof openIdbStorage>>

/** Seconds `body` takes on store `name` of database "bench" (created when writable), opened for the call. */
const onBenchStore = (name: string, readOnly: boolean, body: (store: IdbStore) => Effect.Effect<void, unknown>) =>
  timed(() => Effect.runPromise(Effect.scoped(Effect.flatMap(openIdbStorage("bench", name, { readOnly, create: !readOnly }), body))))

/**
 * IndexedDB measurements on the real browser store (default chunk size),
 * one step per call so the test can take the browser's CPU time around
 * each: sequential 1 MiB writes with a flush every `flushEvery` MiB; random
 * 4 KiB writes, flushed at the end; random 4 KiB reads on a fresh handle
 * (empty chunk cache). Each returns its wall seconds.
 */
const idbBench = {
  sequential: (name: string, mib: number, flushEvery: number) => {
    const piece = patternBytes(1 << 20, 7)
    return onBenchStore(name, false, (store) =>
      Effect.gen(function* () {
        for (let i = 0; i < mib; i++) {
          yield* store.write(i << 20, piece)
          if ((i + 1) % flushEvery === 0) yield* store.flush()
        }
        yield* store.flush()
      })
    )
  },
  randomWrites: (name: string, mib: number, ops: number) => {
    const small = patternBytes(4096, 9)
    const next = randomOffsets(mib << 20, 1)
    return onBenchStore(name, false, (store) =>
      Effect.gen(function* () {
        for (let i = 0; i < ops; i++) yield* store.write(next(), small)
        yield* store.flush()
      })
    )
  },
  randomReads: (name: string, mib: number, ops: number) => {
    const into = new Uint8Array(4096)
    const next = randomOffsets(mib << 20, 2)
    return onBenchStore(name, true, (store) =>
      Effect.gen(function* () {
        for (let i = 0; i < ops; i++) yield* store.read(next(), into)
      })
    )
  },
  remove: (name: string) => Effect.runPromise(Effect.ignore(deleteIdbStore("bench", name)))
}

let benchClusters: Array<Uint8Array> = []

/**
 * Compresses `mib` MiB of mixed 64 KiB clusters (clusters.ts, made by the
 * first call for that size, outside the measured part) with `type` on the
 * Web Worker pool (`workers` workers) or, with `workers` 0, on the page's
 * thread with the portable codec. Returns wall seconds and the bytes stored.
 */
const compressBench = (mib: number, type: 0 | 1, workers: number) => {
  if (benchClusters.length !== mib * 16) benchClusters = mixedClusters(mib * 16, 65536)
  if (workers < 0) return Promise.resolve({ seconds: 0, stored: 0 })
  const clusters = benchClusters
  let stored = 0
  return Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const codec = yield* PortableClusterCodec.make
        const pool = workers > 0 ? yield* makeRuntimeCompressionPool({ workers }) : undefined
        const compress = (c: Uint8Array) => (pool !== undefined ? pool.compress(type, c) : codec.compress(type, c))
        const start = performance.now()
        yield* Effect.forEach(clusters, (c) => Effect.map(compress(c), (r) => void (stored += r?.length ?? c.length)), { concurrency: 8, discard: true })
        return { seconds: (performance.now() - start) / 1000, stored }
      })
    )
  )
}

declare global {
  interface Window {
    qcow2Test: typeof qcow2Test
  }
}

const qcow2Test = { api, conformance, poolRoundTrip, toBase64, collector, idbBench, compressBench, patternBytes }
window.qcow2Test = qcow2Test
document.title = "ready"
