import type { JobOutcome } from "./poolJobs.js"

/**
 * One cluster compressor running on libuv's thread pool (a node:zlib
 * stream, a libzstd context through koffi): one cluster at a time, reused
 * for the next one.
 */
export interface ClusterCompressor {
  readonly level: number
  readonly clusterSize: number
  /**
   * Compresses `input` (one cluster) into `into` (`input.length` bytes or
   * more) and calls `done` with the compressed length, or undefined when
   * QEMU would store the cluster uncompressed. `input` and `into` are used
   * until `done` is called, whatever the caller decided meanwhile.
   */
  compress(input: Uint8Array, into: Uint8Array, done: (error: Error | undefined, length: number | undefined) => void): void
  /** Whether it failed (it is then not reused). */
  readonly broken: boolean
  /** Frees it; only when no call runs. */
  close(): void
}

interface ClusterJob {
  readonly level: number
  readonly data: Uint8Array
  readonly into: Uint8Array
  readonly done: (outcome: JobOutcome) => void
  settled: boolean
}

/**
 * Cluster compression jobs on libuv's thread pool, at most `running` at
 * once; the rest wait in order, holding only references to their buffers.
 * Each running job holds a compressor (a zlib stream is ~300 KiB with
 * QEMU's window and memLevel, a zstd context about as much for a 64 KiB
 * cluster; reused by the next job), so the bound keeps memory in hand.
 */
export class ClusterJobQueue {
  private readonly waiting: Array<ClusterJob> = []
  private waitingHead = 0
  private active = 0
  private readonly idle: Array<ClusterCompressor> = []
  private closed = false

  constructor(
    private readonly running: number,
    private readonly makeCompressor: (level: number, clusterSize: number) => ClusterCompressor
  ) {}

  /**
   * Queues a job compressing `data` into `into` (`data.length` bytes or
   * more; the result is a view on it); returns a function that abandons
   * the job: its callback then never fires, but a job already running
   * still writes `into`, so `into` must not be reused unless the job
   * settled.
   */
  submit(level: number, data: Uint8Array, into: Uint8Array, done: (outcome: JobOutcome) => void): () => void {
    const job: ClusterJob = { level, data, into, done, settled: false }
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
    for (const compressor of this.idle) compressor.close()
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
      let compressor = idle
      if (compressor === undefined || compressor.level !== job.level || compressor.clusterSize !== job.data.length) {
        idle?.close()
        compressor = this.makeCompressor(job.level, job.data.length)
      }
      const running = compressor
      running.compress(job.data, job.into, (error, length) => {
        this.active--
        if (this.closed || running.broken) running.close()
        else this.idle.push(running)
        this.settle(
          job,
          error === undefined ? { ok: true, result: length === undefined ? undefined : job.into.subarray(0, length) } : { ok: false, message: error.message, cause: error }
        )
        if (!this.closed) this.pump()
      })
    }
  }

  private settle(job: ClusterJob, outcome: JobOutcome): void {
    if (job.settled) return
    job.settled = true
    job.done(outcome)
  }
}
