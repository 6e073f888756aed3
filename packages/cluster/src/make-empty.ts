import { Effect } from "effect"
import { debugPoint } from "@qcow2/storage"
import { IncompatibleFeature, writeRefcount, writeRefcountTableEntry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"

/**
 * Whether the image can be emptied by rebuilding it from scratch (QEMU's
 * qcow2_make_empty picks make_completely_empty for these): v3 (the dirty
 * bit covers the steps in between), nothing else that owns clusters (no
 * snapshots, bitmaps, LUKS header or external data file), and room for the
 * header, refcount table, one refcount block and the L1 table in what one
 * refcount block describes.
 */
export const canEmptyCompletely = (engine: Qcow2Engine): boolean => {
  const h = engine.header.header
  const l1Clusters = Math.ceil((engine.l1.size * 8) / engine.geometry.clusterSize)
  return (
    engine.version >= 3 &&
    engine.snapshots.entries.length === 0 &&
    (engine.header.image.extensions.bitmaps?.nbBitmaps ?? 0) === 0 &&
    3 + l1Clusters <= engine.refcounts.blockEntries &&
    h.cryptMethod !== 2 &&
    !engine.externalData
  )
}

/**
 * Empties the image as QEMU's make_completely_empty does, leaving the file
 * as a fresh image of the same virtual size would be: the caches written
 * back and dropped, the dirty bit set (refcounts are about to be wrong),
 * the L1 table and the clusters after the header zeroed, the header
 * pointed at a one-cluster refcount table in cluster 1 and an L1 table in
 * cluster 3, refcount block 0 in cluster 2 counting the header, both
 * tables and itself, the dirty bit cleared (kept under lazy refcounts,
 * whose session it belongs to) and the file cut after the L1 table. The
 * caller re-reads the tables from disk; after a failure the image on disk
 * needs the repair its dirty bit asks for. Raises QEMU's debug events
 * (l1_update, empty_image_prepare, reftable_update, refblock_alloc).
 */
export function emptyCompletely(engine: Qcow2Engine): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const storage = engine.storage
    const cs = engine.geometry.clusterSize
    const l1Clusters = Math.ceil((engine.l1.size * 8) / cs)
    yield* engine.flushMetadata()
    engine.l2Cache.dropClean()
    engine.refcounts.cache.dropClean()
    yield* engine.header.setIncompatible(IncompatibleFeature.Dirty, true)
    yield* debugPoint(storage, "l1_update")
    yield* storage.write(engine.l1.offset, new Uint8Array(l1Clusters * cs))
    yield* debugPoint(storage, "empty_image_prepare")
    yield* storage.write(cs, new Uint8Array((2 + l1Clusters) * cs))
    yield* debugPoint(storage, "l1_update")
    yield* debugPoint(storage, "reftable_update")
    yield* engine.header.update({ l1TableOffset: 3 * cs, refcountTableOffset: cs, refcountTableClusters: 1 })
    yield* debugPoint(storage, "refblock_alloc")
    const entry = new Uint8Array(8)
    writeRefcountTableEntry(entry, 0, 2 * cs)
    yield* storage.write(cs, entry)
    yield* storage.flush()
    const block = new Uint8Array(cs)
    for (let cluster = 0; cluster < 3 + l1Clusters; cluster++) writeRefcount(block, cluster, engine.refcounts.refcountOrder, 1)
    yield* debugPoint(storage, "refblock_update_part")
    yield* storage.write(2 * cs, block)
    yield* storage.flush()
    if (!engine.integrity.lazyRefcounts) yield* engine.header.setIncompatible(IncompatibleFeature.Dirty, false)
    yield* storage.resize((3 + l1Clusters) * cs)
  })
}
