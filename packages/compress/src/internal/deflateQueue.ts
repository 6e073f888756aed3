import { AsyncClusterDeflater } from "./deflateNode.js"
import type { JobOutcome } from "./poolJobs.js"

interface DeflateJob {
  readonly level: number
  readonly data: Uint8Array
  readonly done: (outcome: JobOutcome) => void
  settled: boolean
}

/**
 * Deflate jobs on libuv's thread pool, at most `running` at once; the rest
 * wait in order, holding only a reference to their input. Each running job
 * holds a zlib stream (~300 KiB with QEMU's window and memLevel, plus its
 * output buffer; reused by the next job), so the bound keeps memory in hand.
 */
export class DeflateQueue {
  private readonly waiting: Array<DeflateJob> = []
  private waitingHead = 0
  private active = 0
  private readonly idle: Array<AsyncClusterDeflater> = []
  private closed = false

  constructor(private readonly running: number) {}

  /** Queues a job; returns a function that abandons it (its callback then never fires). */
  submit(level: number, data: Uint8Array, done: (outcome: JobOutcome) => void): () => void {
    const job: DeflateJob = { level, data, done, settled: false }
    if (this.closed) {
      done({ ok: false, message: "compression pool is closed" })
      return () => {}
    }
    this.waiting.push(job)
    this.pump()
    return () => {
      job.settled = true
    }
  }

  /** Fails the waiting jobs; running ones finish on their thread and are dropped. */
  close(): void {
    this.closed = true
    for (const deflater of this.idle) deflater.close()
    this.idle.length = 0
    for (let i = this.waitingHead; i < this.waiting.length; i++) this.settle(this.waiting[i], { ok: false, message: "compression pool is closed" })
    this.waiting.length = 0
    this.waitingHead = 0
  }

  private pump(): void {
    while (this.active < this.running && this.waitingHead < this.waiting.length) {
      const job = this.waiting[this.waitingHead++]
      if (this.waitingHead > 1024 && this.waitingHead * 2 > this.waiting.length) {
        this.waiting.splice(0, this.waitingHead)
        this.waitingHead = 0
      }
      if (job.settled) continue
      this.active++
      const idle = this.idle.pop()
      let deflater = idle
      if (deflater === undefined || deflater.level !== job.level || deflater.clusterSize !== job.data.length) {
        idle?.close()
        deflater = new AsyncClusterDeflater(job.level, job.data.length)
      }
      const running = deflater
      running.deflate(job.data, (error, result) => {
        this.active--
        if (this.closed || running.broken) running.close()
        else this.idle.push(running)
        this.settle(job, error === undefined ? { ok: true, result } : { ok: false, message: error.message, cause: error })
        if (!this.closed) this.pump()
      })
    }
  }

  private settle(job: DeflateJob, outcome: JobOutcome): void {
    if (job.settled) return
    job.settled = true
    job.done(outcome)
  }
}
