import { Effect } from "effect"
import { readL1Entry, readL2EntryForIo, writeL2Entry } from "@qcow2/format"
import type { L2Entry, SnapshotEntry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { errnoOfFailure, ImageError, strerrorOfFailure, toImageError, type EngineFailure } from "./errors.js"
import { readDamageMessage } from "./l2-damage.js"
import { loadL2 } from "./mapping.js"
import { validateSnapshotL1 } from "./snapshot.js"
import type { AmendProgress } from "./refcount-order.js"

/**
 * Removes every zero cluster (the v3 zero flag) from the active L1 table
 * and from every snapshot's, for a downgrade to compat=0.10 (QEMU's
 * qcow2_expand_zero_clusters): without a backing file an unpreallocated
 * zero cluster becomes unallocated (it reads as zeros on v2 too); otherwise
 * it gets a new cluster written with zeros (with as many references as its
 * L2 table has, when that table is shared), and a preallocated one gets
 * its own cluster zeroed. Standard L2 entries only (the caller refuses
 * extended L2). Progress counts L1 entries, active table first.
 *
 * Active L2 tables change in the cache; then the cache is written and
 * emptied, and snapshot L2 tables (which may be the same tables) are read
 * and written directly, each after the refcounts and zeroed clusters it
 * names are durable (rules 1 and 2). Call with nothing else running.
 *
 * Every snapshot's L1 table is checked first, as QEMU checks each before
 * use (qcow2_validate_table); a bad one fails the whole with QEMU's two
 * messages ("Snapshot L1 table offset invalid", then "Failed to turn zero
 * into data clusters: Invalid argument") before anything has changed.
 */
export function expandZeroClusters(engine: Qcow2Engine, snapshots: ReadonlyArray<SnapshotEntry>, progress: AmendProgress): Effect.Effect<void, EngineFailure> {
  return engine.lock.withPermits(1)(
    Effect.gen(function* () {
      for (const snapshot of snapshots) {
        const invalid = validateSnapshotL1(engine, snapshot)
        if (invalid !== undefined) return yield* expansionFailure(engine, invalid, [invalid.message])
      }
      yield* Effect.mapError(expandAll(engine, snapshots, progress), (failure) => expansionFailure(engine, failure))
    })
  )
}

/**
 * A failure of the expansion as QEMU's qcow2_downgrade words it:
 * "Failed to turn zero into data clusters: <strerror>", after `reported`
 * (messages printed before it); a corruption event has printed its own.
 */
const expansionFailure = (engine: Qcow2Engine, failure: EngineFailure, reported?: ReadonlyArray<string>): ImageError =>
  new ImageError({
    reason: toImageError(failure, engine.location).reason,
    message: `Failed to turn zero into data clusters: ${strerrorOfFailure(failure)}`,
    location: engine.location,
    errno: errnoOfFailure(failure),
    ...(reported !== undefined ? { reported } : {}),
    cause: failure
  })

/** The expansion itself, every snapshot's L1 table valid. */
function expandAll(engine: Qcow2Engine, snapshots: ReadonlyArray<SnapshotEntry>, progress: AmendProgress): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const total = engine.l1.size + snapshots.reduce((sum, s) => sum + s.l1Size, 0)
    let visited = 0
    for (let i = 0; i < engine.l1.size; i++) {
      const l2Offset = yield* engine.l1.l2Offset(i)
      if (l2Offset !== 0) {
        const table = yield* loadL2(engine, l2Offset)
        if (yield* expandTable(engine, table, l2Offset)) {
          engine.l2Cache.markDirty(l2Offset)
          engine.l2Cache.dependOnStorageFlush()
        }
      }
      progress(++visited, total)
    }
    yield* engine.flushMetadata()
    engine.l2Cache.dropClean()
    for (const snapshot of snapshots) {
      const l1 = new Uint8Array(snapshot.l1Size * 8)
      yield* engine.storage.read(snapshot.l1TableOffset, l1)
      for (let i = 0; i < snapshot.l1Size; i++) {
        let l2Offset: number
        try {
          l2Offset = readL1Entry(l1, i).l2Offset
        } catch {
          return yield* engine.integrity.markCorrupt(`Snapshot L1 entry ${i} points past 2^53`, snapshot.l1TableOffset + i * 8)
        }
        if (l2Offset !== 0) {
          if (l2Offset % cs !== 0) {
            return yield* engine.integrity.markCorrupt(`L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`, snapshot.l1TableOffset + i * 8)
          }
          const table = new Uint8Array(cs)
          yield* engine.storage.read(l2Offset, table)
          if (yield* expandTable(engine, table, l2Offset)) {
            yield* engine.refcounts.cache.flush()
            yield* engine.integrity.guardWrite(l2Offset, cs, ["active L2 table"])
            yield* engine.storage.write(l2Offset, table)
            yield* engine.storage.flush()
          }
        }
        progress(++visited, total)
      }
    }
  })
}

/** Expands the zero entries of one L2 table in place; true when it changed. */
function expandTable(engine: Qcow2Engine, table: Uint8Array, l2Offset: number): Effect.Effect<boolean, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const cs = g.clusterSize
    const sharers = yield* engine.refcounts.get(l2Offset / cs)
    let changed = false
    for (let j = 0; j < g.l2Entries; j++) {
      const entry = readL2EntryForIo(table, j, g)
      if (entry._tag === "Invalid") return yield* engine.integrity.markCorrupt(readDamageMessage(entry, { l2Offset, index: j }), l2Offset + j * g.l2EntrySize)
      if (entry._tag !== "Zero") continue
      let host = entry.hostOffset
      if (host === 0) {
        if (engine.backing === undefined) {
          writeL2Entry(table, j, { _tag: "Unallocated" }, g)
          changed = true
          continue
        }
        host = yield* engine.refcounts.allocate(1)
        for (let extra = 1; extra < sharers; extra++) yield* engine.refcounts.reference(host, cs)
      }
      yield* engine.integrity.guardWrite(host, cs)
      yield* engine.data.write(host, new Uint8Array(cs))
      const next: L2Entry = { _tag: "Normal", hostOffset: host, copied: sharers === 1 }
      writeL2Entry(table, j, next, g)
      changed = true
    }
    if (changed) yield* engine.data.flush()
    return changed
  })
}
