/**
 * Parallel cluster compression on Node worker threads.
 *
 * QEMU compresses on a thread pool (block/qcow2-threads.c, up to 4 threads);
 * deflate at level 6 runs at ~60-150 MB/s per core, so a `convert -c` is
 * bound by it. This pool runs the same kernels as NodeClusterCodec in
 * worker_threads.
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
import type { CompressionType } from "./CompressionType.js"
import type { CompressionError } from "./errors.js"
import { nodeDeflateCluster } from "./internal/deflateNode.js"
import { nodeInflateRaw } from "./internal/nodeKernels.js"
import { compressOn } from "./internal/poolJobs.js"
import { WorkerPool } from "./internal/workerPool.js"
import { createZstdKernel } from "./internal/zstdKernel.js"
import { zstdWasmModule } from "./internal/zstdModule.js"

/** Options of `makeCompressionPool`. */
export interface CompressionPoolOptions {
  /** Number of worker threads (default: `os.availableParallelism()`). */
  readonly workers?: number
  /** Messages (batches of up to 32 clusters) sent ahead to each worker so it never waits for the next one (default 2). */
  readonly maxInFlightPerWorker?: number
}

/** Options of one `pool.compress` call. */
export interface PoolCompressOptions {
  /**
   * Hand the cluster's memory to the worker instead of copying it. Only when
   * `cluster` spans its whole ArrayBuffer; that ArrayBuffer is then detached
   * (unusable) in the caller. Otherwise the cluster is copied once.
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
   * whatever order the workers finish in. The cluster is copied into a
   * buffer the pool recycles (the worker hands it back with its answer), or
   * handed over with `transfer`; the result's memory is transferred from
   * the worker, not copied.
   */
  readonly compress: (
    type: CompressionType,
    cluster: Uint8Array,
    level?: number,
    options?: PoolCompressOptions
  ) => Effect.Effect<Uint8Array | undefined, CompressionError>
}

/** The worker program: kernels inlined from their source text. */
const compressionWorkerSource = (): string =>
  [
    `"use strict";`,
    `const { parentPort, workerData } = require("node:worker_threads");`,
    `const zlib = require("node:zlib");`,
    // Bundlers with keepNames wrap functions in __name(...); make it harmless here.
    `const __name = (target) => target;`,
    `const createZstdKernel = ${createZstdKernel.toString()};`,
    `const nodeDeflateCluster = ${nodeDeflateCluster.toString()};`,
    `let zstd;`,
    `const compressJob = (job, replies, transfer) => {`,
    `  try {`,
    `    let result;`,
    `    if (job.type === 0) {`,
    `      result = nodeDeflateCluster(zlib, job.data, job.level);`,
    `    } else {`,
    `      if (zstd === undefined) zstd = createZstdKernel(workerData.zstdModule);`,
    `      result = zstd.compress(job.data, job.data.length - 1, job.level);`,
    `    }`,
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
    // One message carries a batch of jobs; one answer carries their results.
    `parentPort.on("message", (jobs) => {`,
    `  const replies = [];`,
    `  const transfer = [];`,
    `  for (const job of jobs) compressJob(job, replies, transfer);`,
    `  parentPort.postMessage(replies, transfer);`,
    `});`
  ].join("\n")

/**
 * Starts a compression pool of worker threads in the current scope; the
 * workers are terminated when the scope closes (pending jobs then fail).
 */
export const makeCompressionPool = (
  options?: CompressionPoolOptions
): Effect.Effect<CompressionPool, never, Scope.Scope> =>
  Effect.gen(function* () {
    const size = Math.max(1, Math.floor(options?.workers ?? availableParallelism()))
    const maxInFlight = Math.max(1, Math.floor(options?.maxInFlightPerWorker ?? 2))
    const zstdModule = yield* Effect.promise(() => zstdWasmModule(nodeInflateRaw))
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new WorkerPool(compressionWorkerSource(), { zstdModule }, size, maxInFlight)),
      (running) => Effect.promise(() => running.close())
    )
    return { workers: size, compress: compressOn(pool) }
  })
