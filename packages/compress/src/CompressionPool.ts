/**
 * Parallel cluster compression on Node, on libuv's thread pool: deflate
 * through node:zlib's asynchronous API, zstd through the system's libzstd
 * with koffi's asynchronous calls; zstd on worker threads running the
 * embedded wasm build where libzstd cannot be had.
 *
 * QEMU compresses on a thread pool (block/qcow2-threads.c, up to 4
 * threads); deflate at level 6 runs at ~60-150 MB/s per core, so a
 * `convert -c` is bound by it. libuv's threads give the same bytes as
 * NodeClusterCodec without an extra V8 isolate (a worker thread costs
 * ~10-45 MiB of memory) and without a message per batch.
 *
 * The wasm workers' code is a string assembled from the kernel's source
 * text (`Function.prototype.toString`) and started with `new Worker(code,
 * { eval: true })`, so no worker file has to be found on disk: it works
 * from source under vitest, from `dist/`, and inside a CLI bundled by
 * esbuild into one file. The compiled wasm module is passed to each
 * worker in `workerData`.
 */
import { availableParallelism } from "node:os"
import { Effect, type Scope } from "effect"
import { CompressionType } from "./CompressionType.js"
import { CompressionError } from "./errors.js"
import { ClusterJobQueue } from "./internal/clusterQueue.js"
import { AsyncClusterDeflater } from "./internal/deflateNode.js"
import { nodeInflateRaw } from "./internal/nodeKernels.js"
import { checkedBatchLevel, checkedLevel, compressOn, jobFailure, outcomeEffect, type JobOutcome } from "./internal/poolJobs.js"
import { OutputMemory } from "./internal/outputMemory.js"
import { WorkerPool } from "./internal/workerPool.js"
import { createZstdKernel } from "./internal/zstdKernel.js"
import { zstdWasmModule } from "./internal/zstdModule.js"
import { nativeZstd } from "./internal/zstdNative.js"

/** Options of `makeCompressionPool`. */
export interface CompressionPoolOptions {
  /**
   * The parallelism asked for (default: `os.availableParallelism()`):
   * clusters compressed at once on libuv's thread pool are up to three
   * times this (bounded by twice libuv's threads), wasm zstd worker threads
   * this many.
   */
  readonly workers?: number
  /**
   * wasm zstd worker threads, when they should be fewer than `workers`
   * (default: `workers`). Each is a V8 isolate (~10 MiB); a caller whose
   * own thread is busy too (reading, writing, metadata) may leave a core
   * to it.
   */
  readonly zstdWorkers?: number
  /** Messages (batches of up to 32 zstd clusters) sent ahead to each wasm zstd worker so it never waits for the next one (default 2). */
  readonly maxInFlightPerWorker?: number
  /**
   * Which zstd runs: the system's libzstd through koffi on libuv's thread
   * pool (`"native"`, the default where both load; about twice as fast as
   * wasm) or the embedded wasm build on worker threads (`"wasm"`, and
   * where native cannot be had).
   */
  readonly zstd?: "native" | "wasm"
}

/** Options of one `pool.compress` call. */
export interface PoolCompressOptions {
  /**
   * wasm zstd: hand the cluster's memory to the worker instead of copying
   * it. Only when `cluster` spans its whole ArrayBuffer; that ArrayBuffer
   * is then detached (unusable) in the caller. Otherwise the cluster is
   * copied once. On libuv's thread pool (deflate, native zstd) the cluster
   * is never copied nor detached: it is read in place and must stay
   * unchanged until the call settles.
   */
  readonly transfer?: boolean
}

/** A running pool; closed (workers terminated) when its scope closes. */
export interface CompressionPool {
  readonly workers: number
  /**
   * Compresses one cluster like `ClusterCodec.compress` (same bytes as
   * NodeClusterCodec): the result, or `undefined` when it would not fit in
   * `cluster.length - 1` bytes. Each call settles with its own result, so
   * `Effect.forEach(clusters, ..., { concurrency })` keeps input order
   * whatever order the workers finish in. For zstd the cluster is copied
   * into a buffer the pool recycles (the worker hands it back with its
   * answer), or handed over with `transfer`; the result's memory is
   * transferred from the worker, not copied.
   */
  readonly compress: (
    type: CompressionType,
    cluster: Uint8Array,
    level?: number,
    options?: PoolCompressOptions
  ) => Effect.Effect<Uint8Array | undefined, CompressionError>
  /**
   * Compresses `data`, consecutive whole clusters of `clusterSize` bytes
   * (`data.length` a multiple of it), as `compress` would each one, and
   * runs `use` on the results in order (undefined: store that cluster
   * uncompressed). The results are valid only until `use` settles (their
   * memory is then reused), and `data` must stay unchanged until then. One
   * job for the whole request: zstd sends it in one message (read in place
   * when `data` is on a SharedArrayBuffer, else copied once into pool
   * memory), and the compressed
   * clusters come back packed one after another, so a run of them can be
   * written with one request (`packedRuns`).
   */
  readonly compressClusters: <A, E, R>(
    type: CompressionType,
    data: Uint8Array,
    clusterSize: number,
    level: number | undefined,
    use: (results: ReadonlyArray<Uint8Array | undefined>) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | CompressionError, R>
}

/** Bytes of a zstd batch sent to one worker at most (a `convert` request is one part). */
const ZSTD_PART_BYTES = 2 * 1024 * 1024

/** Most output memory kept spare between requests on libuv's threads: a few requests of 2 MiB (convert's) at once. */
const SPARE_OUTPUT_BYTES = 8 * 1024 * 1024

/** The worker program (wasm zstd only): the kernel inlined from its source text. */
const compressionWorkerSource = (): string =>
  [
    `"use strict";`,
    `const { parentPort, workerData } = require("node:worker_threads");`,
    // Bundlers with keepNames wrap functions in __name(...); make it harmless here.
    `const __name = (target) => target;`,
    `const createZstdKernel = ${createZstdKernel.toString()};`,
    `const makeZstd = () => createZstdKernel(workerData.zstdModule);`,
    `let zstd;`,
    `const compressJob = (job, replies, transfer) => {`,
    `  try {`,
    `    if (zstd === undefined) zstd = makeZstd();`,
    `    const result = zstd.compress(job.data, job.data.length - 1, job.level);`,
    // The input's memory goes back with the answer, for the next request.
    `    if (result === undefined) {`,
    `      replies.push({ id: job.id, ok: true, result: undefined, input: job.data });`,
    `      transfer.push(job.data.buffer);`,
    `    } else {`,
    `      const owned = result.byteOffset === 0 && result.byteLength === result.buffer.byteLength ? result : result.slice();`,
    `      replies.push({ id: job.id, ok: true, result: owned, input: job.data });`,
    `      transfer.push(owned.buffer, job.data.buffer);`,
    `    }`,
    `  } catch (error) {`,
    `    replies.push({ id: job.id, ok: false, message: error && error.message ? error.message : String(error) });`,
    `  }`,
    `};`,
    // A batch: the clusters' compressed bytes are packed from the start of
    // the request's own memory. Cluster k's output starts at most k * (size - 1)
    // bytes in and is shorter than a cluster, so it only covers bytes of
    // clusters already compressed (their input was copied into the wasm heap).
    // With `out` (the input is shared memory, read in place) they are packed there.
    `const compressBatch = (job, replies, transfer) => {`,
    `  try {`,
    `    if (zstd === undefined) zstd = makeZstd();`,
    `    const size = job.clusterSize;`,
    `    const data = job.data;`,
    `    const out = job.out === undefined ? data : job.out;`,
    `    const sizes = new Int32Array(data.length / size);`,
    `    let packed = 0;`,
    `    for (let k = 0; k < sizes.length; k++) {`,
    `      const result = zstd.compress(data.subarray(k * size, (k + 1) * size), size - 1, job.level);`,
    `      if (result === undefined) { sizes[k] = -1; continue; }`,
    `      out.set(result, packed);`,
    `      sizes[k] = result.length;`,
    `      packed += result.length;`,
    `    }`,
    `    replies.push({ id: job.id, ok: true, result: out, sizes });`,
    `    transfer.push(out.buffer, sizes.buffer);`,
    `  } catch (error) {`,
    `    replies.push({ id: job.id, ok: false, message: error && error.message ? error.message : String(error) });`,
    `  }`,
    `};`,
    // One message carries a batch of jobs; one answer carries their results.
    `parentPort.on("message", (jobs) => {`,
    `  const replies = [];`,
    `  const transfer = [];`,
    `  for (const job of jobs) (job.clusterSize === undefined ? compressJob : compressBatch)(job, replies, transfer);`,
    `  parentPort.postMessage(replies, transfer);`,
    `});`
  ].join("\n")

/**
 * Starts a compression pool in the current scope. Jobs run on libuv's
 * thread pool, a bounded number at once; libzstd is bound, or the wasm
 * workers started, by the first zstd job. Everything stops when the scope
 * closes (pending jobs then fail).
 */
export const makeCompressionPool = (
  options?: CompressionPoolOptions
): Effect.Effect<CompressionPool, never, Scope.Scope> =>
  Effect.gen(function* () {
    const size = Math.max(1, Math.floor(options?.workers ?? availableParallelism()))
    const zstdSize = Math.max(1, Math.floor(options?.zstdWorkers ?? size))
    const maxInFlight = Math.max(1, Math.floor(options?.maxInFlightPerWorker ?? 2))
    // More jobs than libuv has threads: a thread that finishes a cluster
    // takes the next queued one at once instead of waiting for the main
    // thread (256 MiB convert -c, 2 cores: 6 at once ran ~15% faster than
    // 3). Each holds a zlib stream or a zstd context, ~0.3-0.5 MiB.
    const libuvThreads = Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4)
    const running = Math.max(1, Math.min(3 * size, 2 * libuvThreads))
    const deflates = new ClusterJobQueue(running, (level, clusterSize) => new AsyncClusterDeflater(level, clusterSize))
    let closed = false
    let zstdRunner: Promise<JobRunner | undefined> | undefined
    const startZstd = (): Promise<JobRunner | undefined> =>
      (zstdRunner ??= (async (): Promise<JobRunner | undefined> => {
        const native = options?.zstd === "wasm" ? undefined : (await nativeZstd())?.compressors
        if (native !== undefined) return closed ? undefined : { _tag: "Queue", queue: new ClusterJobQueue(running, native) }
        const zstdModule = await zstdWasmModule(nodeInflateRaw)
        return closed ? undefined : { _tag: "Workers", workers: new WorkerPool(compressionWorkerSource(), { zstdModule }, zstdSize, maxInFlight) }
      })())
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        closed = true
        deflates.close()
        const zstd = await zstdRunner?.catch(() => undefined)
        if (zstd?._tag === "Queue") zstd.queue.close()
        else await zstd?.workers.close()
      })
    )
    const closedError = (type: CompressionType) =>
      new CompressionError({ compressionType: type, reason: "Failed", message: "compression pool is closed" })
    const deflateRunner: Effect.Effect<JobRunner, CompressionError> = Effect.succeed({ _tag: "Queue", queue: deflates })
    /** Where the jobs of `type` run, started on first use. */
    const runnerFor = (type: CompressionType): Effect.Effect<JobRunner, CompressionError> =>
      type === CompressionType.Deflate
        ? deflateRunner
        : Effect.tryPromise({
            try: startZstd,
            catch: (cause) =>
              new CompressionError({ compressionType: type, reason: "Failed", message: `zstd compression needs WebAssembly, which failed here: ${cause instanceof Error ? cause.message : String(cause)}`, cause })
          }).pipe(Effect.flatMap((runner) => (runner === undefined ? Effect.fail(closedError(type)) : Effect.succeed(runner))))
    /** Output memory of jobs on libuv's threads, handed back once a request's jobs have all finished. */
    const outputs = new OutputMemory(SPARE_OUTPUT_BYTES)
    /**
     * One cluster on libuv's threads: compressed into a spare buffer and
     * copied out, so the result holds only its own bytes.
     */
    const compressOnQueue = (queue: ClusterJobQueue, type: CompressionType, level: number, cluster: Uint8Array) =>
      Effect.callback<Uint8Array | undefined, CompressionError>((resume) => {
        const into = outputs.take(cluster.length)
        const cancel = queue.submit(level, cluster, into, (outcome) => {
          const copied: JobOutcome = outcome.ok ? { ok: true, result: outcome.result?.slice() } : outcome
          outputs.give(into)
          resume(outcomeEffect(type, copied))
        })
        return Effect.sync(cancel)
      })
    /** One part of a wasm zstd batch on a worker: its compressed clusters packed in pool memory, and their sizes. */
    const zstdPart = (workers: WorkerPool, type: CompressionType, level: number, data: Uint8Array, clusterSize: number) =>
      Effect.callback<{ readonly packed: Uint8Array; readonly sizes: Int32Array }, CompressionError>((resume) => {
        // Shared memory is read by the worker in place; other memory is copied once.
        const shared = data.buffer instanceof SharedArrayBuffer
        const pooled = workers.borrow(data.length)
        if (!shared) pooled.set(data)
        const done = (outcome: JobOutcome) =>
          resume(
            !outcome.ok
              ? Effect.fail(jobFailure(type, outcome.message, outcome.cause))
              : outcome.result !== undefined && outcome.sizes !== undefined
                ? Effect.succeed({ packed: outcome.result, sizes: outcome.sizes })
                : Effect.fail(jobFailure(type, "compression worker gave a malformed answer"))
          )
        return Effect.sync(shared ? workers.submit(type, level, data, done, clusterSize, pooled) : workers.submit(type, level, pooled, done, clusterSize))
      })
    /**
     * A wasm zstd batch: parts of at most ZSTD_PART_BYTES (whole clusters)
     * go to the workers at once, so a large request still spreads over
     * them; the parts' memory is recycled once `use` settles.
     */
    const workerClusters = <A, E, R>(
      workers: WorkerPool,
      type: CompressionType,
      level: number,
      data: Uint8Array,
      clusterSize: number,
      use: (results: ReadonlyArray<Uint8Array | undefined>) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | CompressionError, R> => {
      const partBytes = Math.max(clusterSize, Math.floor(ZSTD_PART_BYTES / clusterSize) * clusterSize)
      const starts: Array<number> = []
      for (let at = 0; at < data.length; at += partBytes) starts.push(at)
      return Effect.flatMap(
        Effect.forEach(starts, (at) => zstdPart(workers, type, level, data.subarray(at, Math.min(data.length, at + partBytes)), clusterSize), { concurrency: "unbounded" }),
        (parts) => {
          const results: Array<Uint8Array | undefined> = []
          for (const { packed, sizes } of parts) {
            let at = 0
            for (const size of sizes) {
              results.push(size < 0 ? undefined : packed.subarray(at, at + size))
              if (size > 0) at += size
            }
          }
          return Effect.ensuring(
            use(results),
            Effect.sync(() => {
              for (const part of parts) workers.recycle(part.packed)
            })
          )
        }
      )
    }
    /**
     * Each cluster of `data` on libuv's threads, its result copied into the
     * cluster's slot of `output` (as long as `data`); once all are in, the
     * results are packed from the buffer's start in order, so a run of them
     * is one view for one storage write (the first failure fails the lot).
     */
    const queueClusters = (queue: ClusterJobQueue, type: CompressionType, level: number, data: Uint8Array, clusterSize: number, output: Uint8Array) =>
      Effect.callback<ReadonlyArray<Uint8Array | undefined>, CompressionError>((resume) => {
        const results: Array<Uint8Array | undefined> = new Array(data.length / clusterSize)
        let left = results.length
        let failed = false
        const cancels: Array<() => void> = []
        for (let k = 0; k < results.length && !failed; k++) {
          const slot = output.subarray(k * clusterSize, (k + 1) * clusterSize)
          cancels.push(
            queue.submit(level, data.subarray(k * clusterSize, (k + 1) * clusterSize), slot, (outcome) => {
              if (failed) return
              if (!outcome.ok) {
                failed = true
                for (const cancel of cancels) cancel()
                resume(Effect.fail(jobFailure(type, outcome.message, outcome.cause)))
                return
              }
              results[k] = outcome.result
              if (--left === 0) resume(Effect.succeed(packResults(output, results)))
            })
          )
        }
        return Effect.sync(() => {
          for (const cancel of cancels) cancel()
        })
      })
    const compressClusters: CompressionPool["compressClusters"] = (type, data, clusterSize, level, use) =>
      Effect.suspend(() => {
        const resolvedLevel = checkedBatchLevel(type, data, clusterSize, level)
        if (typeof resolvedLevel !== "number") return resolvedLevel
        return Effect.flatMap(runnerFor(type), (runner) => {
          if (runner._tag === "Workers") return workerClusters(runner.workers, type, resolvedLevel, data, clusterSize, use)
          // Handed back only once every job has finished: after a failure or an
          // interruption a job may still be writing into it.
          const output = outputs.take(data.length)
          return Effect.flatMap(queueClusters(runner.queue, type, resolvedLevel, data, clusterSize, output), (results) =>
            Effect.ensuring(
              use(results),
              Effect.sync(() => outputs.give(output))
            )
          )
        })
      })
    const compress: CompressionPool["compress"] = (type, cluster, level, options) =>
      Effect.suspend(() => {
        const resolvedLevel = checkedLevel(type, cluster, level)
        if (typeof resolvedLevel !== "number") return resolvedLevel
        return Effect.flatMap(runnerFor(type), (runner) =>
          runner._tag === "Queue" ? compressOnQueue(runner.queue, type, resolvedLevel, cluster) : compressOn(runner.workers)(type, cluster, level, options)
        )
      })
    return { workers: size, compress, compressClusters }
  })

/** Where the jobs of a compression type run: on libuv's threads (deflate, native zstd), or on the wasm zstd worker threads. */
type JobRunner = { readonly _tag: "Queue"; readonly queue: ClusterJobQueue } | { readonly _tag: "Workers"; readonly workers: WorkerPool }

/**
 * Moves each result (a view on its cluster's slot of `output`) to follow
 * the one before, from the buffer's start: result k moves down to at most
 * k * (cluster size - 2) bytes in, so it only covers slots already moved.
 * Answers the moved views, in order.
 */
const packResults = (output: Uint8Array, results: ReadonlyArray<Uint8Array | undefined>): ReadonlyArray<Uint8Array | undefined> => {
  let packed = 0
  return results.map((result) => {
    if (result === undefined) return undefined
    const from = result.byteOffset - output.byteOffset
    if (from !== packed) output.copyWithin(packed, from, from + result.length)
    const moved = output.subarray(packed, packed + result.length)
    packed += result.length
    return moved
  })
}
