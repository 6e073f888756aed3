/**
 * A fixed set of Web Workers answering compression jobs, for the browser
 * compression pool (WebCompressionPool.ts). The browser twin of
 * workerPool.ts (Node worker_threads), kept apart so each stays readable:
 * Web Workers are started from a Blob URL, have no exit code and no
 * ref/unref, and report a crash as an `error` event on the Worker.
 *
 * Jobs are queued and sent to the least busy worker (at most `maxInFlight`
 * each); each job's callback fires once, whatever the completion order. A
 * worker that fails (an uncaught error, a message that cannot be
 * deserialised) fails its in-flight jobs and is replaced; three failures in
 * a row without an answer stop the pool.
 */
import { SpareBuffers, type JobOutcome } from "./poolJobs.js"

/** A request to a worker: compress `data` (one cluster) with `type` at `level`. */
interface WorkerRequest {
  readonly id: number
  readonly type: number
  readonly level: number
  readonly data: Uint8Array
}

/** A worker's answer (see webWorkerMain.ts). */
type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly result: Uint8Array | undefined; readonly input?: Uint8Array }
  | { readonly id: number; readonly ok: false; readonly message: string }

interface Job {
  readonly request: WorkerRequest
  readonly done: (outcome: JobOutcome) => void
  settled: boolean
}

interface Slot {
  readonly worker: Worker
  readonly inflight: Map<number, Job>
  answered: number
}

/** Consecutive worker failures without a single answer after which the pool gives up. */
const CRASH_LOOP_LIMIT = 3

export class WebWorkerPool {
  private readonly slots: Array<Slot> = []
  private readonly queue: Array<Job> = []
  private queueHead = 0
  private nextId = 1
  private closed = false
  private broken: string | undefined
  private failuresWithoutAnswer = 0
  private readonly spare = new SpareBuffers()
  private readonly url: string

  /**
   * Starts `size` workers running `source` (a classic script), each first
   * sent `{ zstdModule }` (a compiled WebAssembly.Module is structured-cloneable).
   */
  constructor(
    source: string,
    private readonly zstdModule: WebAssembly.Module | undefined,
    readonly size: number,
    private readonly maxInFlight: number
  ) {
    this.url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }))
    for (let i = 0; i < size; i++) this.slots.push(this.spawn())
  }

  /** Queues a job; returns a function that cancels it (its callback then never fires). */
  submit(type: number, level: number, data: Uint8Array, done: (outcome: JobOutcome) => void): () => void {
    const job: Job = { request: { id: this.nextId++, type, level, data }, done, settled: false }
    if (this.closed || this.broken !== undefined) {
      this.settle(job, { ok: false, message: this.broken ?? "compression pool is closed" })
      return () => {}
    }
    this.queue.push(job)
    this.dispatch()
    return () => {
      job.settled = true
    }
  }

  /** A buffer of `size` bytes for a request, recycled from earlier requests when possible. */
  borrow(size: number): Uint8Array {
    return this.spare.borrow(size)
  }

  /** Fails every pending job and terminates the workers. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.failAll("compression pool is closed")
    for (const slot of this.slots) slot.worker.terminate()
    URL.revokeObjectURL(this.url)
  }

  private spawn(): Slot {
    const worker = new Worker(this.url, { name: "qcow2-compress" })
    const slot: Slot = { worker, inflight: new Map(), answered: 0 }
    worker.onmessage = (event: MessageEvent<WorkerReply>) => this.onReply(slot, event.data)
    worker.onerror = (event) => {
      event.preventDefault()
      this.onFailure(slot, `compression worker failed: ${event.message || "error in worker"}`)
    }
    worker.onmessageerror = () => this.onFailure(slot, "compression worker sent a message that could not be read")
    worker.postMessage({ zstdModule: this.zstdModule })
    return slot
  }

  private onReply(slot: Slot, reply: WorkerReply): void {
    const job = slot.inflight.get(reply.id)
    if (job === undefined) return
    slot.inflight.delete(reply.id)
    slot.answered++
    this.failuresWithoutAnswer = 0
    if (reply.ok && reply.input !== undefined) this.spare.recycle(reply.input)
    this.settle(job, reply.ok ? { ok: true, result: reply.result ?? undefined } : { ok: false, message: reply.message })
    this.dispatch()
  }

  private onFailure(slot: Slot, reason: string): void {
    if (this.closed) return
    const index = this.slots.indexOf(slot)
    if (index < 0) return
    slot.worker.terminate()
    for (const job of slot.inflight.values()) this.settle(job, { ok: false, message: reason })
    slot.inflight.clear()
    if (slot.answered === 0) this.failuresWithoutAnswer++
    if (this.failuresWithoutAnswer >= CRASH_LOOP_LIMIT) {
      this.slots.splice(index, 1)
      this.broken = `compression workers keep failing (${reason})`
      this.failAll(this.broken)
      return
    }
    this.slots[index] = this.spawn()
    this.dispatch()
  }

  private dispatch(): void {
    while (this.queueHead < this.queue.length) {
      let best: Slot | undefined
      for (const slot of this.slots) {
        if (slot.inflight.size < this.maxInFlight && (best === undefined || slot.inflight.size < best.inflight.size)) best = slot
      }
      if (best === undefined) return
      const job = this.queue[this.queueHead++]
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
        this.queue.splice(0, this.queueHead)
        this.queueHead = 0
      }
      if (job.settled) continue
      best.inflight.set(job.request.id, job)
      best.worker.postMessage(job.request, [job.request.data.buffer as ArrayBuffer])
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
