import { Effect, Semaphore } from "effect"

/**
 * The engine's metadata lock (QEMU's s->lock): one holder at a time changes
 * the L1 table, L2 tables and refcounts, and may wait for I/O while holding
 * them half changed.
 *
 * It also says whether anyone holds it (`isFree`). A change that needs no
 * I/O and runs start to end in one synchronous stretch of code (the write
 * path's placement of new clusters, write-now.ts) cannot interleave with
 * anything else on this thread, so when no holder is in the middle of its
 * work it may run without taking the lock: as if it had taken it and given
 * it back before the next holder.
 */
export class MetadataLock {
  private readonly semaphore = Semaphore.makeUnsafe(1)
  /** Holders between their first and last step (0 or 1). */
  private holders = 0
  private readonly enter = Effect.sync(() => {
    this.holders++
  })
  private readonly leave = Effect.sync(() => {
    this.holders--
  })

  /** Whether no holder is in the middle of its work now. */
  get isFree(): boolean {
    return this.holders === 0
  }

  /** Runs `effect` holding the lock (`permits` is always 1; the signature is the Semaphore's). */
  withPermits(permits: 1): <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R> {
    const locked = this.semaphore.withPermits(permits)
    return (effect) => locked(Effect.andThen(this.enter, Effect.ensuring(effect, this.leave)))
  }
}
