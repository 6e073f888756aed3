import { Effect } from "effect"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { isStructuralDamage, strerrorOfFailure } from "./errors.js"

/**
 * Drops one reference to host bytes [offset, offset + length), as QEMU's
 * qcow2_free_clusters does: when the refcounts refuse the change (a
 * refcount already 0, an unaligned refcount block), the caller's metadata
 * change stands; the failure is printed ("qcow2_free_clusters failed:
 * Invalid argument") and the clusters stay counted, a leak `check -r
 * leaks` repairs. Damage is a corruption event first, as in
 * update_refcount. Anything else (the mapping tables that must be written
 * before a refcount drops, the store) fails the caller: its change did
 * not reach the disk.
 */
export function freeClusters(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<void, EngineFailure> {
  return Effect.catchIf(
    engine.refcounts.free(offset, length),
    (failure) => failure._tag === "RefcountError",
    (failure) =>
      Effect.andThen(
        isStructuralDamage(failure) ? Effect.ignore(engine.integrity.markCorrupt(failure.message, failure.offset)) : Effect.void,
        Effect.sync(() => engine.report(`qcow2_free_clusters failed: ${strerrorOfFailure(failure)}`))
      )
  )
}
