/**
 * What the Node worker-thread pool (workerPool.ts) and the Web Worker pool
 * (webWorkerPool.ts) share: how a job ends, the recycled request buffers,
 * and the `CompressionPool.compress` built over either one.
 */
import { Effect } from "effect"
import type { CompressionPool, PoolCompressOptions } from "../CompressionPool.js"
import { isClusterSize, type CompressionType } from "../CompressionType.js"
import { CompressionError } from "../errors.js"
import { checkCompressInput, resolveLevel } from "./codec.js"

/** How a job ended, as seen by its submitter. */
export type JobOutcome =
  | {
      readonly ok: true
      /**
       * One cluster: its compressed bytes, undefined when it is stored
       * uncompressed. A batch (see `sizes`): the request's buffer with the
       * compressed clusters packed from its start.
       */
      readonly result: Uint8Array | undefined
      /** A batch: each cluster's compressed length in `result`, in order, -1 for one stored uncompressed. */
      readonly sizes?: Int32Array
    }
  | { readonly ok: false; readonly message: string; readonly cause?: unknown }

/** Most spare buffers kept per size, and most bytes (at least one buffer): bounds on the memory the recycling holds. */
const SPARE_LIMIT = 64
const SPARE_BYTES = 8 * 1024 * 1024

/** Request buffers handed back by the workers, kept for the next requests of the same size. */
export class SpareBuffers {
  private readonly spare = new Map<number, Array<ArrayBuffer>>()

  /** A buffer of `size` bytes, recycled when one is spare. */
  borrow(size: number): Uint8Array {
    const buffer = this.spare.get(size)?.pop()
    return buffer === undefined ? new Uint8Array(size) : new Uint8Array(buffer)
  }

  /** Keeps `input`'s memory when it spans a whole ArrayBuffer and the limit allows. */
  recycle(input: Uint8Array): void {
    const buffer = input.buffer
    if (!(buffer instanceof ArrayBuffer) || input.byteOffset !== 0 || input.byteLength !== buffer.byteLength) return
    let list = this.spare.get(buffer.byteLength)
    if (list === undefined) {
      list = []
      this.spare.set(buffer.byteLength, list)
    }
    if (list.length < SPARE_LIMIT && (list.length === 0 || (list.length + 1) * buffer.byteLength <= SPARE_BYTES)) list.push(buffer)
  }
}

/** A failed job as the CompressionError (reason `Failed`) its submitter gets. */
export const jobFailure = (type: CompressionType, message: string, cause?: unknown): CompressionError =>
  new CompressionError({ compressionType: type, reason: "Failed", message, ...(cause !== undefined ? { cause } : {}) })

/** A job's outcome as the result of `compress` (a failure is CompressionError reason `Failed`). */
export const outcomeEffect = (type: CompressionType, outcome: JobOutcome): Effect.Effect<Uint8Array | undefined, CompressionError> =>
  outcome.ok ? Effect.succeed(outcome.result) : Effect.fail(jobFailure(type, outcome.message, outcome.cause))

/** The part of a worker pool `compress` needs. */
export interface JobQueue {
  /** A buffer to copy a cluster into (recycled by the pool). */
  readonly borrow: (size: number) => Uint8Array
  /** Queues one job; the returned function abandons it (its outcome is then dropped). */
  readonly submit: (type: number, level: number, data: Uint8Array, done: (outcome: JobOutcome) => void) => () => void
}

/** The cluster itself when it may be handed over (`transfer`, spanning its whole ArrayBuffer), else a copy in a pool buffer. */
const ownedCopy = (queue: JobQueue, cluster: Uint8Array, transfer: boolean | undefined): Uint8Array => {
  if (transfer === true && cluster.buffer instanceof ArrayBuffer && cluster.byteOffset === 0 && cluster.byteLength === cluster.buffer.byteLength) {
    return cluster
  }
  const copy = queue.borrow(cluster.length)
  copy.set(cluster)
  return copy
}

/** The compression level for a checked input, or the failure a bad input (type, size, level) gets, on the caller's side. */
export const checkedLevel = (type: CompressionType, cluster: Uint8Array, level: number | undefined): number | Effect.Effect<never, CompressionError> => {
  try {
    checkCompressInput(type, cluster)
    return resolveLevel(type, level)
  } catch (error) {
    return error instanceof CompressionError ? Effect.fail(error) : Effect.die(error)
  }
}

/**
 * The level for a checked batch (`data`: whole clusters of `clusterSize`
 * bytes, at least one), or the failure a bad one gets, as `checkedLevel`.
 */
export const checkedBatchLevel = (
  type: CompressionType,
  data: Uint8Array,
  clusterSize: number,
  level: number | undefined
): number | Effect.Effect<never, CompressionError> => {
  if (!isClusterSize(clusterSize) || data.length === 0 || data.length % clusterSize !== 0) {
    return Effect.fail(
      new CompressionError({
        compressionType: type,
        reason: "Unsupported",
        message: `input of ${data.length} bytes is not whole clusters of ${clusterSize} bytes (a power of two from 512 B to 2 MiB)`
      })
    )
  }
  return checkedLevel(type, data.subarray(0, clusterSize), level)
}

/** `CompressionPool.compressClusters` as one `compress` per cluster, all at once (pools without batches). */
export const compressEach =
  (compress: CompressionPool["compress"]): CompressionPool["compressClusters"] =>
  (type, data, clusterSize, level, use) =>
    Effect.suspend(() => {
      const resolvedLevel = checkedBatchLevel(type, data, clusterSize, level)
      if (typeof resolvedLevel !== "number") return resolvedLevel
      const starts = Array.from({ length: data.length / clusterSize }, (_, k) => k * clusterSize)
      return Effect.flatMap(
        Effect.forEach(starts, (start) => compress(type, data.subarray(start, start + clusterSize), resolvedLevel), { concurrency: "unbounded" }),
        use
      )
    })

/** `CompressionPool.compress` over `queue`: input checked on the caller's side, one job per cluster, interruptible. */
export const compressOn =
  (queue: JobQueue): CompressionPool["compress"] =>
  (type: CompressionType, cluster: Uint8Array, level?: number, options?: PoolCompressOptions) =>
    Effect.suspend(() => {
      const resolvedLevel = checkedLevel(type, cluster, level)
      if (typeof resolvedLevel !== "number") return resolvedLevel
      const data = ownedCopy(queue, cluster, options?.transfer)
      return Effect.callback<Uint8Array | undefined, CompressionError>((resume) => {
        const cancel = queue.submit(type, resolvedLevel, data, (outcome) => resume(outcomeEffect(type, outcome)))
        return Effect.sync(cancel)
      })
    })
