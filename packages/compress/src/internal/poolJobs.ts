/**
 * What the Node worker-thread pool (workerPool.ts) and the Web Worker pool
 * (webWorkerPool.ts) share: how a job ends, the recycled request buffers,
 * and the `CompressionPool.compress` built over either one.
 */
import { Effect } from "effect"
import type { CompressionPool, PoolCompressOptions } from "../CompressionPool.js"
import type { CompressionType } from "../CompressionType.js"
import { CompressionError } from "../errors.js"
import { checkCompressInput, resolveLevel } from "./codec.js"

/** How a job ended, as seen by its submitter. */
export type JobOutcome =
  | { readonly ok: true; readonly result: Uint8Array | undefined }
  | { readonly ok: false; readonly message: string; readonly cause?: unknown }

/** Most spare buffers kept per size (a bound on the memory the recycling holds). */
const SPARE_LIMIT = 64

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
    if (list.length < SPARE_LIMIT) list.push(buffer)
  }
}

/** A job's outcome as the result of `compress` (a failure is CompressionError reason `Failed`). */
export const outcomeEffect = (type: CompressionType, outcome: JobOutcome): Effect.Effect<Uint8Array | undefined, CompressionError> =>
  outcome.ok
    ? Effect.succeed(outcome.result)
    : Effect.fail(new CompressionError({ compressionType: type, reason: "Failed", message: outcome.message, ...(outcome.cause !== undefined ? { cause: outcome.cause } : {}) }))

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
