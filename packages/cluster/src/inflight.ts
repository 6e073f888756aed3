import { Deferred, Effect } from "effect"
import type { Semaphore } from "effect"

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
 */
export class InFlightAllocations {
  private readonly allocations = new Set<Allocation>()

  /** The first in-flight allocation overlapping guest clusters [first, last], if any. */
  overlapping(first: number, last: number): Deferred.Deferred<void> | undefined {
    for (const a of this.allocations) if (a.first <= last && first <= a.last) return a.done
    return undefined
  }

  /** Registers clusters [first, last] as being allocated; call the returned effect when done. */
  register(first: number, last: number): Effect.Effect<Effect.Effect<void>> {
    return Effect.map(Deferred.make<void>(), (done) => {
      const allocation: Allocation = { first, last, done }
      this.allocations.add(allocation)
      return Effect.suspend(() => {
        this.allocations.delete(allocation)
        return Effect.asVoid(Deferred.succeed(done, undefined))
      })
    })
  }

  get size(): number {
    return this.allocations.size
  }

  /**
   * Runs `body` holding `lock` once no allocation over guest clusters
   * [first, last] is in flight; while one is, waits for it without the lock.
   */
  whenSettled<A, E>(lock: Semaphore.Semaphore, first: number, last: number, body: Effect.Effect<A, E>): Effect.Effect<A, E> {
    const self = this
    const attempt = lock.withPermits(1)(
      Effect.suspend((): Effect.Effect<{ readonly wait: Deferred.Deferred<void> } | { readonly done: A }, E> => {
        const wait = self.overlapping(first, last)
        return wait !== undefined ? Effect.succeed({ wait }) : Effect.map(body, (done) => ({ done }))
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
