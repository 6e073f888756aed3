import { Worker } from "node:worker_threads"
import { SpareBuffers, type JobOutcome } from "./poolJobs.js"

/**
 * A request to a worker: compress `data` with `type` at `level`, as one
 * cluster, or with `clusterSize` as consecutive clusters of that size (a
 * batch). A batch packs its results into `out` when given (`data` is then
 * shared memory, read in place), else into `data`.
 */
interface WorkerRequest {
  readonly id: number
  readonly type: number
  readonly level: number
  readonly data: Uint8Array
  readonly clusterSize?: number
  readonly out?: Uint8Array
}

/**
 * A worker's answer. One cluster: `result` is undefined when the cluster
 * does not shrink enough, and `input` hands the request's memory back for
 * reuse. A batch: `result` is the request's memory with the compressed
 * clusters packed from its start, `sizes` their lengths (-1: stored
 * uncompressed); the submitter recycles `result` once done with it.
 */
type WorkerReply =
  | {
      readonly id: number
      readonly ok: true
      readonly result: Uint8Array | undefined
      readonly input?: Uint8Array
      readonly sizes?: Int32Array
    }
  | { readonly id: number; readonly ok: false; readonly message: string }

interface Job {
  readonly request: WorkerRequest
  readonly done: (outcome: JobOutcome) => void
  settled: boolean
}

interface Slot {
  worker: Worker
  /** Jobs sent and not answered, by id. */
  readonly inflight: Map<number, Job>
  /** Messages (batches of jobs) sent and not answered. */
  messages: number
  /** Jobs this worker answered; a worker that dies before answering any counts towards the crash-loop limit. */
  answered: number
  lastError: unknown
}

/**
 * Jobs per message at most, and their bytes: a message and its answer each
 * cost both threads a wake-up, which on a busy machine costs more than
 * compressing a small cluster.
 */
const BATCH_JOBS = 32
const BATCH_BYTES = 2 * 1024 * 1024

/** Consecutive worker deaths without a single answer after which the pool gives up. */
const CRASH_LOOP_LIMIT = 3

/**
 * A fixed set of worker threads running `source` (CommonJS, `eval: true`),
 * each answering a message holding an array of WorkerRequests with one
 * holding the array of their WorkerReplies. Jobs are queued, and those
 * submitted in the same turn of the event loop go out together, in
 * batches (BATCH_JOBS, BATCH_BYTES) to the least busy worker (at most
 * `maxInFlight` messages each); each job's callback fires once, whatever
 * the completion order. A worker
 * that dies fails its in-flight jobs and is replaced. Idle workers are
 * unref'ed so an idle pool does not keep the process alive.
 */
export class WorkerPool {
  private readonly slots: Array<Slot> = []
  private readonly queue: Array<Job> = []
  private queueHead = 0
  private nextId = 1
  private closed = false
  private broken: string | undefined
  private dispatchQueued = false
  private deathsWithoutAnswer = 0
  private readonly spare = new SpareBuffers()

  constructor(
    private readonly source: string,
    private readonly workerData: unknown,
    readonly size: number,
    private readonly maxInFlight: number
  ) {
    for (let i = 0; i < size; i++) this.slots.push(this.spawn())
  }

  /**
   * Queues a job (a batch of clusters when `clusterSize` is given, packed
   * into `out` when given); returns a function that cancels it (its
   * callback then never fires).
   */
  submit(type: number, level: number, data: Uint8Array, done: (outcome: JobOutcome) => void, clusterSize?: number, out?: Uint8Array): () => void {
    const id = this.nextId++
    const request: WorkerRequest =
      clusterSize === undefined ? { id, type, level, data } : out === undefined ? { id, type, level, data, clusterSize } : { id, type, level, data, clusterSize, out }
    const job: Job = { request, done, settled: false }
    if (this.closed || this.broken !== undefined) {
      this.settle(job, { ok: false, message: this.broken ?? "compression pool is closed" })
      return () => {}
    }
    this.queue.push(job)
    if (!this.dispatchQueued) {
      this.dispatchQueued = true
      queueMicrotask(() => {
        this.dispatchQueued = false
        this.dispatch()
      })
    }
    return () => {
      job.settled = true
    }
  }

  /** A buffer of `size` bytes for a request, recycled from earlier requests when possible. */
  borrow(size: number): Uint8Array {
    return this.spare.borrow(size)
  }

  /** Hands a buffer back for later requests (a batch's packed result, once its submitter is done with it). */
  recycle(buffer: Uint8Array): void {
    this.spare.recycle(buffer)
  }

  /** Fails every pending job and terminates the workers. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.failAll("compression pool is closed")
    await Promise.all(this.slots.map((slot) => slot.worker.terminate()))
  }

  private spawn(): Slot {
    const worker = new Worker(this.source, { eval: true, workerData: this.workerData, resourceLimits: { maxYoungGenerationSizeMb: 2 } })
    const slot: Slot = { worker, inflight: new Map(), messages: 0, answered: 0, lastError: undefined }
    worker.unref()
    worker.on("message", (replies: ReadonlyArray<WorkerReply>) => this.onReplies(slot, replies))
    worker.on("error", (error) => {
      slot.lastError = error
    })
    worker.on("exit", (code) => this.onExit(slot, code))
    return slot
  }

  private onReplies(slot: Slot, replies: ReadonlyArray<WorkerReply>): void {
    slot.messages = Math.max(0, slot.messages - 1)
    for (const reply of replies) {
      const job = slot.inflight.get(reply.id)
      if (job === undefined) continue
      slot.inflight.delete(reply.id)
      slot.answered++
      this.deathsWithoutAnswer = 0
      if (reply.ok && reply.input !== undefined) this.spare.recycle(reply.input)
      this.settle(
        job,
        reply.ok
          ? reply.sizes !== undefined
            ? { ok: true, result: reply.result, sizes: reply.sizes }
            : { ok: true, result: reply.result ?? undefined }
          : { ok: false, message: reply.message }
      )
    }
    if (slot.inflight.size === 0) slot.worker.unref()
    this.dispatch()
  }

  private onExit(slot: Slot, code: number): void {
    if (this.closed) return
    const reason =
      slot.lastError instanceof Error
        ? `compression worker failed: ${slot.lastError.message}`
        : `compression worker exited with code ${code}`
    for (const job of slot.inflight.values()) this.settle(job, { ok: false, message: reason, cause: slot.lastError })
    slot.inflight.clear()
    slot.messages = 0
    if (slot.answered === 0) this.deathsWithoutAnswer++
    if (this.deathsWithoutAnswer >= CRASH_LOOP_LIMIT) {
      this.broken = `compression workers keep failing (${reason})`
      this.failAll(this.broken)
      return
    }
    const index = this.slots.indexOf(slot)
    if (index >= 0) this.slots[index] = this.spawn()
    this.dispatch()
  }

  private dispatch(): void {
    while (this.queueHead < this.queue.length) {
      let best: Slot | undefined
      for (const slot of this.slots) {
        if (slot.messages < this.maxInFlight && (best === undefined || slot.messages < best.messages)) best = slot
      }
      if (best === undefined) return
      const requests: Array<WorkerRequest> = []
      const transfer: Array<ArrayBuffer> = []
      let bytes = 0
      while (this.queueHead < this.queue.length && requests.length < BATCH_JOBS && (bytes === 0 || bytes + this.queue[this.queueHead].request.data.length <= BATCH_BYTES)) {
        const job = this.queue[this.queueHead++]
        if (job.settled) continue
        best.inflight.set(job.request.id, job)
        requests.push(job.request)
        // Shared memory is read in place (it cannot be transferred); a batch's `out` goes over.
        if (job.request.data.buffer instanceof ArrayBuffer) transfer.push(job.request.data.buffer)
        if (job.request.out !== undefined) transfer.push(job.request.out.buffer as ArrayBuffer)
        bytes += job.request.data.length
      }
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
        this.queue.splice(0, this.queueHead)
        this.queueHead = 0
      }
      if (requests.length === 0) continue
      if (best.messages === 0) best.worker.ref()
      best.messages++
      best.worker.postMessage(requests, transfer)
    }
  }

  private failAll(message: string): void {
    for (let i = this.queueHead; i < this.queue.length; i++) this.settle(this.queue[i], { ok: false, message })
    this.queue.length = 0
    this.queueHead = 0
    for (const slot of this.slots) {
      for (const job of slot.inflight.values()) this.settle(job, { ok: false, message })
      slot.inflight.clear()
    }
  }

  private settle(job: Job, outcome: JobOutcome): void {
    if (job.settled) return
    job.settled = true
    job.done(outcome)
  }
}
