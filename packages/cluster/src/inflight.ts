import { Deferred, Effect } from "effect"
import type { MetadataLock } from "./lock.js"

interface Allocation {
  readonly first: number
  readonly last: number
  readonly done: Deferred.Deferred<void>
}

/**
 * Guest cluster ranges whose allocation is in progress (QEMU's list of
 * in-flight cluster allocations, s->cluster_allocs). A write that needs a
 * cluster in such a range waits for it to finish, then looks the mapping up
 * again: two concurrent writes to one unallocated cluster never both win.
 *
 * Also the direct writes in flight: data written in place into clusters
 * the image owns, outside the metadata lock (fastpath.ts, and the locked
 * path's in-place writes). A request that may free such a cluster or stop
 * owning it (discard, zero, compressed write, truncate, snapshots, repair)
 * first closes the door (`excludingDirect`: new writes take the locked
 * path), then, holding the lock, waits until the direct writes in flight
 * are done (`whenSettled`, `directDrained`) before it changes an entry:
 * a write acknowledged into a cluster never lands after that cluster was
 * given to something else.
 */
export class InFlightAllocations {
  private readonly allocations = new Set<Allocation>()
  private direct = 0
  private closers = 0
  private drainWaiters: Array<() => void> = []

  /** Whether a write may go to storage without the lock now (no request has closed the door). */
  get admitsDirect(): boolean {
    return this.closers === 0
  }

  /** Counts a direct write that is starting; pair with `endDirect`. */
  beginDirect(): void {
    this.direct++
  }

  endDirect(): void {
    this.direct--
    if (this.direct > 0 || this.drainWaiters.length === 0) return
    const waiters = this.drainWaiters
    this.drainWaiters = []
    for (const wake of waiters) wake()
  }

  /** Completes once no direct write is in flight. */
  readonly directDrained: Effect.Effect<void> = Effect.suspend(() =>
    this.direct === 0
      ? Effect.void
      : Effect.callback<void>((resume) => {
          this.drainWaiters.push(() => resume(Effect.void))
        })
  )

  /** Runs `effect` with new writes kept off the direct path (they take the lock) until it ends. */
  excludingDirect<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.acquireUseRelease(
      Effect.sync(() => {
        this.closers++
      }),
      () => effect,
      () =>
        Effect.sync(() => {
          this.closers--
        })
    )
  }

  /** Runs `body` holding `lock` once the direct writes in flight are done (call inside `excludingDirect`). */
  withLockDrained<A, E>(lock: MetadataLock, body: Effect.Effect<A, E>): Effect.Effect<A, E> {
    return lock.withPermits(1)(Effect.andThen(this.directDrained, body))
  }

  /** The first in-flight allocation overlapping guest clusters [first, last], if any. */
  overlapping(first: number, last: number): Deferred.Deferred<void> | undefined {
    for (const a of this.allocations) if (a.first <= last && first <= a.last) return a.done
    return undefined
  }

  /** Registers clusters [first, last] as being allocated; call the returned effect when done. */
  register(first: number, last: number): Effect.Effect<Effect.Effect<void>> {
    return Effect.sync(() => this.registerNow(first, last))
  }

  /** `register` without an Effect (for a placement made in plain code, write-now.ts). */
  registerNow(first: number, last: number): Effect.Effect<void> {
    const allocation: Allocation = { first, last, done: Deferred.makeUnsafe<void>() }
    this.allocations.add(allocation)
    return Effect.sync(() => {
      this.allocations.delete(allocation)
      Deferred.doneUnsafe(allocation.done, Effect.void)
    })
  }

  get size(): number {
    return this.allocations.size
  }

  /**
   * Runs `body` holding `lock` once no allocation over guest clusters
   * [first, last] is in flight; while one is, waits for it without the
   * lock. Direct writes in flight are waited for with the lock held (they
   * never need it to finish).
   */
  whenSettled<A, E>(lock: MetadataLock, first: number, last: number, body: Effect.Effect<A, E>): Effect.Effect<A, E> {
    const self = this
    const attempt = lock.withPermits(1)(
      Effect.suspend((): Effect.Effect<{ readonly wait: Deferred.Deferred<void> } | { readonly done: A }, E> => {
        const wait = self.overlapping(first, last)
        return wait !== undefined ? Effect.succeed({ wait }) : Effect.andThen(self.directDrained, Effect.map(body, (done) => ({ done })))
      })
    )
    return Effect.gen(function* () {
      for (;;) {
        const outcome = yield* attempt
        if ("done" in outcome) return outcome.done
        yield* Deferred.await(outcome.wait)
      }
    })
  }
}
