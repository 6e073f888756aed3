/**
 * Parallel cluster compression on Node: deflate on libuv's thread pool,
 * zstd on worker threads.
 *
 * QEMU compresses on a thread pool (block/qcow2-threads.c, up to 4 threads);
 * deflate at level 6 runs at ~60-150 MB/s per core, so a `convert -c` is
 * bound by it. node:zlib's asynchronous API runs deflate on libuv's threads
 * with the same bytes as NodeClusterCodec and no extra V8 isolate (a worker
 * thread costs ~25-45 MiB of memory). zstd runs the same wasm kernel as
 * NodeClusterCodec in worker_threads, started with the first zstd cluster.
 *
 * The worker code is a string assembled from the kernels' source text
 * (`Function.prototype.toString`) and started with `new Worker(code, { eval:
 * true })`, so no worker file has to be found on disk: it works from source
 * under vitest, from `dist/`, and inside a CLI bundled by esbuild into one
 * file. zstd runs in the workers too: the compiled wasm module is passed to
 * each worker in `workerData`.
 */
import { availableParallelism } from "node:os"
import { Effect, type Scope } from "effect"
import { CompressionType } from "./CompressionType.js"
import { CompressionError } from "./errors.js"
import { DeflateQueue } from "./internal/deflateQueue.js"
import { nodeInflateRaw } from "./internal/nodeKernels.js"
import { checkedBatchLevel, checkedLevel, compressOn, jobFailure, outcomeEffect, type JobOutcome } from "./internal/poolJobs.js"
import { WorkerPool } from "./internal/workerPool.js"
import { createZstdKernel } from "./internal/zstdKernel.js"
import { zstdWasmModule } from "./internal/zstdModule.js"
import { createNativeZstdKernel, koffiEntry, nativeZstdKernel } from "./internal/zstdNative.js"

/** Options of `makeCompressionPool`. */
export interface CompressionPoolOptions {
  /**
   * Deflate clusters compressed at once on libuv's thread pool, and zstd
   * worker threads (default: `os.availableParallelism()`).
   */
  readonly workers?: number
  /**
   * zstd worker threads, when they should be fewer than `workers` (default:
   * `workers`). Each is a V8 isolate (~10 MiB); a caller whose own thread
   * is busy too (reading, writing, metadata) may leave a core to it.
   */
  readonly zstdWorkers?: number
  /** Messages (batches of up to 32 zstd clusters) sent ahead to each worker so it never waits for the next one (default 2). */
  readonly maxInFlightPerWorker?: number
  /**
   * Which zstd the workers run: the system's libzstd through koffi
   * (`"native"`, the default where both load; about twice as fast) or the
   * embedded wasm build (`"wasm"`, and where native cannot be had).
   */
  readonly zstd?: "native" | "wasm"
}

/** Options of one `pool.compress` call. */
export interface PoolCompressOptions {
  /**
   * zstd: hand the cluster's memory to the worker instead of copying it.
   * Only when `cluster` spans its whole ArrayBuffer; that ArrayBuffer is
   * then detached (unusable) in the caller. Otherwise the cluster is copied
   * once. Deflate never copies nor detaches: the cluster is read in place
   * and must stay unchanged until the call settles.
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

/** The worker program (zstd only): the kernel inlined from its source text. */
const compressionWorkerSource = (): string =>
  [
    `"use strict";`,
    `const { parentPort, workerData } = require("node:worker_threads");`,
    // Bundlers with keepNames wrap functions in __name(...); make it harmless here.
    `const __name = (target) => target;`,
    `const createZstdKernel = ${createZstdKernel.toString()};`,
    `const createNativeZstdKernel = ${createNativeZstdKernel.toString()};`,
    // workerData.koffi: where koffi is, for libzstd; else workerData.zstdModule: the compiled wasm.
    `const makeZstd = () => workerData.koffi !== undefined ? createNativeZstdKernel(require(workerData.koffi)) : createZstdKernel(workerData.zstdModule);`,
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
 * Starts a compression pool in the current scope. Deflate jobs run on
 * libuv's thread pool, `workers` at a time; the zstd worker threads and the
 * compiled wasm are made by the first zstd job. Everything stops when the
 * scope closes (pending jobs then fail).
 */
export const makeCompressionPool = (
  options?: CompressionPoolOptions
): Effect.Effect<CompressionPool, never, Scope.Scope> =>
  Effect.gen(function* () {
    const size = Math.max(1, Math.floor(options?.workers ?? availableParallelism()))
    const zstdSize = Math.max(1, Math.floor(options?.zstdWorkers ?? size))
    const maxInFlight = Math.max(1, Math.floor(options?.maxInFlightPerWorker ?? 2))
    // More deflate jobs than libuv has threads: a thread that finishes a
    // cluster takes the next queued one at once instead of waiting for the
    // main thread (256 MiB convert -c, 2 cores: 6 at once ran ~15% faster
    // than 3). Each holds a zlib stream and an output buffer, ~0.4 MiB.
    const libuvThreads = Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4)
    const deflates = new DeflateQueue(Math.max(1, Math.min(3 * size, 2 * libuvThreads)))
    let closed = false
    let zstdWorkers: Promise<WorkerPool | undefined> | undefined
    const workerData = async (): Promise<{ readonly koffi: string } | { readonly zstdModule: WebAssembly.Module }> => {
      const koffi = options?.zstd !== "wasm" && (await nativeZstdKernel()) !== undefined ? koffiEntry() : undefined
      return koffi !== undefined ? { koffi } : { zstdModule: await zstdWasmModule(nodeInflateRaw) }
    }
    const startZstdWorkers = (): Promise<WorkerPool | undefined> =>
      (zstdWorkers ??= workerData().then((data) => (closed ? undefined : new WorkerPool(compressionWorkerSource(), data, zstdSize, maxInFlight))))
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        closed = true
        deflates.close()
        const workers = await zstdWorkers?.catch(() => undefined)
        await workers?.close()
      })
    )
    const closedError = (type: CompressionType) =>
      new CompressionError({ compressionType: type, reason: "Failed", message: "compression pool is closed" })
    const compressZstd = (type: CompressionType, cluster: Uint8Array, level?: number, options?: PoolCompressOptions) =>
      Effect.tryPromise({
        try: startZstdWorkers,
        catch: (cause) =>
          new CompressionError({ compressionType: type, reason: "Failed", message: `zstd compression needs WebAssembly, which failed here: ${cause instanceof Error ? cause.message : String(cause)}`, cause })
      }).pipe(Effect.flatMap((workers) => (workers === undefined ? Effect.fail(closedError(type)) : compressOn(workers)(type, cluster, level, options))))
    /** One part of a zstd batch on a worker: its compressed clusters packed in pool memory, and their sizes. */
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
     * A zstd batch: parts of at most ZSTD_PART_BYTES (whole clusters) go to
     * the workers at once, so a large request still spreads over them; the
     * parts' memory is recycled once `use` settles.
     */
    const zstdClusters = <A, E, R>(
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
    /** Deflate of each cluster on libuv's thread pool; the results once all are in (the first failure fails the lot). */
    const deflateClusters = (type: CompressionType, level: number, data: Uint8Array, clusterSize: number) =>
      Effect.callback<ReadonlyArray<Uint8Array | undefined>, CompressionError>((resume) => {
        const results: Array<Uint8Array | undefined> = new Array(data.length / clusterSize)
        let left = results.length
        let failed = false
        const cancels: Array<() => void> = []
        for (let k = 0; k < results.length && !failed; k++) {
          cancels.push(
            deflates.submit(level, data.subarray(k * clusterSize, (k + 1) * clusterSize), (outcome) => {
              if (failed) return
              if (!outcome.ok) {
                failed = true
                for (const cancel of cancels) cancel()
                resume(Effect.fail(jobFailure(type, outcome.message, outcome.cause)))
                return
              }
              results[k] = outcome.result
              if (--left === 0) resume(Effect.succeed(results))
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
        if (type === CompressionType.Deflate) return Effect.flatMap(deflateClusters(type, resolvedLevel, data, clusterSize), use)
        return Effect.tryPromise({
          try: startZstdWorkers,
          catch: (cause) =>
            new CompressionError({ compressionType: type, reason: "Failed", message: `zstd compression needs WebAssembly, which failed here: ${cause instanceof Error ? cause.message : String(cause)}`, cause })
        }).pipe(Effect.flatMap((workers) => (workers === undefined ? Effect.fail(closedError(type)) : zstdClusters(workers, type, resolvedLevel, data, clusterSize, use))))
      })
    const compress: CompressionPool["compress"] = (type, cluster, level, options) =>
      Effect.suspend(() => {
        const resolvedLevel = checkedLevel(type, cluster, level)
        if (typeof resolvedLevel !== "number") return resolvedLevel
        if (type !== CompressionType.Deflate) return compressZstd(type, cluster, level, options)
        return Effect.callback<Uint8Array | undefined, CompressionError>((resume) => {
          const cancel = deflates.submit(resolvedLevel, cluster, (outcome) => resume(outcomeEffect(type, outcome)))
          return Effect.sync(cancel)
        })
      })
    return { workers: size, compress, compressClusters }
  })
