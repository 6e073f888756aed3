import { Deferred, Effect, Fiber } from "effect"
import { describe, expect, it } from "vitest"
import { MetadataLock } from "../src/lock.js"

describe("MetadataLock", () => {
  it("is free only while no holder is between its first and last step, whether the holder ends, fails or is interrupted", async () => {
    const lock = new MetadataLock()
    const seen = await Effect.runPromise(
      Effect.gen(function* () {
        const seen: Array<boolean> = [lock.isFree]
        const gate = yield* Deferred.make<void>()
        const holder = yield* Effect.forkChild(lock.withPermits(1)(Effect.andThen(Effect.sync(() => seen.push(lock.isFree)), Deferred.await(gate))))
        // A second fiber waits for the lock: still held, not free.
        const waiter = yield* Effect.forkChild(lock.withPermits(1)(Effect.sync(() => seen.push(lock.isFree))))
        yield* Effect.yieldNow
        seen.push(lock.isFree)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(holder)
        yield* Fiber.join(waiter)
        seen.push(lock.isFree)
        yield* Effect.exit(lock.withPermits(1)(Effect.fail("boom")))
        seen.push(lock.isFree)
        const stuck = yield* Effect.forkChild(lock.withPermits(1)(Effect.never))
        yield* Effect.yieldNow
        seen.push(lock.isFree)
        yield* Fiber.interrupt(stuck)
        seen.push(lock.isFree)
        return seen
      })
    )
    expect(seen).toEqual([true, false, false, false, true, true, false, true])
  })
})
