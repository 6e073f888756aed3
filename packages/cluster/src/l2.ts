import { Effect } from "effect"
import { debugPoint } from "@qcow2/storage"
import type { L2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { l2Coverage, loadL2 } from "./mapping.js"
import { freeClusters, withDiscards } from "./free.js"

/** A host byte range [offset, offset + length). */
export interface HostRange {
  readonly offset: number
  readonly length: number
}

/**
 * The offset of an L2 table that may be written for guest `offset`:
 * allocates one when the L1 entry is empty, or copies a table shared with a
 * snapshot (L1 entry without COPIED). The new table's refcount and the
 * table itself reach storage before the L1 entry naming it (rules 1 and 4),
 * and the table it replaces is freed only after that. Call with the
 * metadata lock held.
 */
export function prepareL2ForWrite(engine: Qcow2Engine, offset: number): Effect.Effect<number, EngineFailure> {
  return Effect.gen(function* () {
    const l1 = engine.l1
    const l1Index = Math.floor(offset / l2Coverage(engine))
    if (l1Index >= l1.size) yield* l1.grow(l1Index + 1, engine.refcounts)
    const current = yield* l1.l2Offset(l1Index)
    if (current !== 0 && l1.copied(l1Index)) return current
    const cs = engine.geometry.clusterSize
    const newOffset = yield* engine.refcounts.allocate(1, "L2 table")
    yield* engine.integrity.guardWrite(newOffset, cs)
    if (current !== 0) yield* debugPoint(engine.storage, "l2_alloc_cow_read")
    const previous = current !== 0 ? yield* loadL2(engine, current) : undefined
    const table = yield* engine.l2Cache.getEmpty(newOffset)
    if (previous !== undefined) table.set(previous)
    engine.l2Cache.markDirty(newOffset)
    // QEMU's l2_allocate writes the refcount blocks here even with lazy refcounts.
    yield* engine.refcounts.cache.flush()
    yield* debugPoint(engine.storage, "l2_alloc_write")
    yield* engine.l2Cache.flush()
    yield* l1.link(l1Index, newOffset)
    yield* engine.storage.flush()
    if (current !== 0) yield* freeClusters(engine, current, cs)
    return newOffset
  })
}

/** An entry of this image's own (COPIED) with a host cluster: written in place. */
export const isOwned = (engine: Qcow2Engine, entry: L2Entry): boolean =>
  (entry._tag === "Normal" || entry._tag === "Subclusters") && entry.copied && (entry.hostOffset !== 0 || engine.externalData)

/** An owned cluster, or a preallocated zero cluster of this image alone: written where it is (QEMU keeps both). */
export const isKept = (engine: Qcow2Engine, entry: L2Entry): entry is Extract<L2Entry, { hostOffset: number }> =>
  isOwned(engine, entry) || (entry._tag === "Zero" && entry.copied && entry.hostOffset !== 0)

/** An entry with host data behind it (QEMU's "allocated" cluster types; a preallocated zero cluster counts). */
export const hasHostData = (engine: Qcow2Engine, entry: L2Entry): boolean => {
  switch (entry._tag) {
    case "Normal":
      return entry.hostOffset !== 0 || engine.externalData
    case "Compressed":
      return true
    case "Zero":
      return entry.hostOffset !== 0
    case "Subclusters":
      return entry.hostOffset !== 0 || (engine.externalData && entry.copied)
    case "Unallocated":
    case "Invalid":
      return false
  }
}

/**
 * The host bytes whose reference goes away when `old` is replaced by an
 * entry pointing at `keptHost` (the same cluster stays referenced), if any.
 * Clusters of an external data file are not refcounted.
 */
export function replacedHostRange(engine: Qcow2Engine, old: L2Entry, keptHost?: number): HostRange | undefined {
  if (engine.externalData) return undefined
  switch (old._tag) {
    case "Normal":
    case "Zero":
    case "Subclusters":
      return old.hostOffset !== 0 && old.hostOffset !== keptHost ? { offset: old.hostOffset, length: engine.geometry.clusterSize } : undefined
    case "Compressed":
      return { offset: old.hostOffset, length: old.compressedSize }
    case "Unallocated":
    case "Invalid":
      return undefined
  }
}

/**
 * Drops the references of replaced entries (after the L2 change is in the
 * cache; rule 3 is the allocator's). `passDiscard`: a discard, not a
 * copy-on-write; the store discards what is left unreferenced (QEMU's
 * QCOW2_DISCARD_REQUEST against QCOW2_DISCARD_OTHER).
 */
export function releaseReplaced(engine: Qcow2Engine, ranges: ReadonlyArray<HostRange>, passDiscard = false): Effect.Effect<void, EngineFailure> {
  if (ranges.length === 0) return Effect.void
  engine.decompressed.forget()
  const freed = Effect.forEach(ranges, (range) => freeClusters(engine, range.offset, range.length, passDiscard), { discard: true })
  return passDiscard ? withDiscards(engine, freed) : freed
}
