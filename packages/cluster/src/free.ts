import { Effect } from "effect"
import type { Refcounts } from "@qcow2/alloc"
import type { BlockStorageShape } from "@qcow2/storage"
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
 * not reach the disk. `passDiscard`: the clusters left unreferenced are
 * discarded in the store too (see passDiscards).
 */
export function freeClusters(engine: Qcow2Engine, offset: number, length: number, passDiscard = false): Effect.Effect<void, EngineFailure> {
  return Effect.catchIf(
    engine.refcounts.free(offset, length, passDiscard),
    (failure) => failure._tag === "RefcountError",
    (failure) =>
      Effect.andThen(
        isStructuralDamage(failure) ? Effect.ignore(engine.integrity.markCorrupt(failure.message, failure.offset)) : Effect.void,
        Effect.sync(() => engine.report(`qcow2_free_clusters failed: ${strerrorOfFailure(failure)}`))
      )
  )
}

/**
 * Hands the clusters that frees with `passDiscard` left unreferenced to
 * the store to discard (QEMU's qcow2_process_discards, which gives the
 * file back its space: pass-discard-request and pass-discard-snapshot are
 * on by default). Call with the lock held, before the freed clusters can
 * be handed out again. A store that cannot discard keeps the bytes; a
 * discard that fails changes nothing, as in QEMU.
 */
export function passDiscards(image: { readonly refcounts: Refcounts; readonly storage: BlockStorageShape }): Effect.Effect<void> {
  return Effect.suspend(() => {
    const ranges = image.refcounts.takeDiscards()
    if (ranges.length === 0 || !image.storage.capabilities.discard) return Effect.void
    return Effect.forEach(ranges, (range) => Effect.ignore(image.storage.discard(range.offset, range.length)), { discard: true })
  })
}

/**
 * Runs `effect`, whose frees pass discards on, then hands the store what
 * they left unreferenced; after a failure nothing is discarded (QEMU's
 * qcow2_process_discards with an error drops its queue).
 */
export function withDiscards<A>(engine: Qcow2Engine, effect: Effect.Effect<A, EngineFailure>): Effect.Effect<A, EngineFailure> {
  return Effect.onExit(effect, (exit) => (exit._tag === "Success" ? passDiscards(engine) : Effect.sync(() => void engine.refcounts.takeDiscards())))
}
