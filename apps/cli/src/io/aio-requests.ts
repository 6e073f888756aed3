/**
 * qemu-io's asynchronous requests in flight (aio_read, aio_write) on the
 * open image. Each runs as a fiber of its own from the moment it is
 * submitted, started at once as QEMU enters a request's coroutine, and
 * goes as far as it can while later commands run. What it prints when it
 * completes (qemu-io's aio_*_done) is kept until qemu-io's main loop would
 * call it back, which in qemu-io 7.2 is only while a command waits for
 * requests (aio_flush, wait_break, sleep) and when the image is closed
 * (QEMU drains it): a synchronous read or write in between does not let
 * the completions of earlier aio requests through (try `-c 'aio_write 0 4k'
 * -c 'read 0 4k'`: the read's lines come first). So the lines of
 * completions come in a fixed place, whatever the timing, and in the order
 * the requests completed.
 *
 * A request held at a blkdebug breakpoint waits until it is resumed. QEMU
 * waits for it forever; here a wait for requests stops (false) when every
 * request in flight is held, since none of them can complete, and closing
 * the image resumes them.
 */
import { Effect } from "effect"
import type { BlkdebugBreakpoints } from "@qcow2/storage/blkdebug"

/** What a completed request prints, called when qemu-io's main loop would deliver it. */
export type CompletionReport = () => void

export class AioRequests {
  /** One token per request in flight. */
  private readonly running = new Set<symbol>()
  /** Completions not delivered yet, in the order the requests completed. */
  private completed: CompletionReport[] = []
  /** Waiters for the next completion. */
  private readonly waiters = new Set<() => void>()

  /** `breakpoints`: the open image's blkdebug breakpoints, when it has a blkdebug node (requests can then be held). */
  constructor(private readonly breakpoints: () => BlkdebugBreakpoints | undefined) {}

  /** Starts `request`; its report is kept for delivery when it ends. */
  submit(request: Effect.Effect<CompletionReport>): Effect.Effect<void> {
    const self = this
    return Effect.gen(function* () {
      const entry = Symbol("aio request")
      self.running.add(entry)
      const ended = Effect.sync(() => {
        self.running.delete(entry)
        const woken = [...self.waiters]
        self.waiters.clear()
        for (const wake of woken) wake()
      })
      const tracked = Effect.map(request, (report) => void self.completed.push(report))
      yield* Effect.forkDetach(Effect.ensuring(tracked, ended), { startImmediately: true })
    })
  }

  /** Prints the reports of the requests that have completed (qemu-io's main loop calling them back). */
  deliver(): void {
    const reports = this.completed
    this.completed = []
    for (const report of reports) report()
  }

  /**
   * Lets the requests run until `done()`, delivering their completions as
   * they come; false when it cannot happen: nothing is in flight any more,
   * or every request in flight is held at a breakpoint.
   */
  waitUntil(done: () => boolean): Effect.Effect<boolean> {
    const self = this
    return Effect.gen(function* () {
      for (;;) {
        self.deliver()
        if (done()) return true
        const breakpoints = self.breakpoints()
        if (self.running.size === 0 || (breakpoints?.held() ?? 0) >= self.running.size) return false
        const completion = Effect.callback<void>((resume) => {
          const wake = (): void => resume(Effect.void)
          self.waiters.add(wake)
          return Effect.sync(() => void self.waiters.delete(wake))
        })
        yield* (breakpoints !== undefined ? Effect.raceFirst(completion, breakpoints.nextSuspension) : completion)
      }
    })
  }

  /** Waits for every request in flight (QEMU's drain); false when some are held at a breakpoint. */
  drain(): Effect.Effect<boolean> {
    return this.waitUntil(() => this.running.size === 0)
  }

  /**
   * Drains before the image closes. QEMU would wait forever for a request
   * held at a breakpoint; here the breakpoints are cleared when nothing else
   * can complete, so the held requests resume ("blkdebug: Resuming request"),
   * complete, and leave the image consistent.
   */
  close(): Effect.Effect<void> {
    const self = this
    return Effect.gen(function* () {
      while (!(yield* self.drain())) {
        const breakpoints = self.breakpoints()
        if (breakpoints === undefined || breakpoints.held() === 0) return
        breakpoints.clear()
      }
    })
  }
}
