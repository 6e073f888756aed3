import { Effect } from "effect"
import { readL2EntryForIo, setL2ZeroFlag, writeL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { hasHostData, prepareL2ForWrite, releaseReplaced, replacedHostRange } from "./l2.js"
import type { HostRange } from "./l2.js"
import { freeDamageMessage, readDamageMessage, unalignedStandIn } from "./l2-damage.js"
import { l2Coverage, l2TableOffset, loadL2 } from "./mapping.js"

const ALL_ZERO_BITMAP = 0xffffffff

/**
 * What becomes of an entry: a new entry (and whether the old host cluster
 * is freed), the zero flag ORed into the entry as it is (a standard entry
 * zeroed without unmapping), or nothing (undefined).
 */
type EntryChange = (entry: Exclude<L2Entry, { _tag: "Invalid" }>) =>
  | {
      readonly entry: Exclude<L2Entry, { _tag: "Invalid" }>
      readonly free: boolean
    }
  | "SetZeroFlag"
  | undefined

/**
 * Discards whole clusters [offset, offset + length) (both cluster aligned,
 * except a last partial cluster at the end of the image). What is left
 * reads as QEMU's discard leaves it: zeros on v3 images (zero flag, or
 * all-zero subclusters), the backing file on v2 images; host clusters are
 * freed. Unallocated clusters without a backing file stay as they are, but
 * their L2 table is made all the same (QEMU's discard_in_l2_slice gets the
 * table for writing first).
 */
export function discardClusters(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<void, EngineFailure> {
  return changeClusters(engine, offset, length, true, discardChange(engine))
}

/** discardClusters with the lock held and no allocation in flight over the range. */
export function discardClustersHeld(engine: Qcow2Engine, start: number, end: number): Effect.Effect<void, EngineFailure> {
  return changeHeld(engine, start, end, true, discardChange(engine))
}

const discardChange = (engine: Qcow2Engine): EntryChange => {
  const hasBacking = engine.backing !== undefined
  return (old) => {
    if (!(hasBacking || hasHostData(engine, old))) return undefined
    if (engine.geometry.extendedL2) {
      return { entry: { _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: ALL_ZERO_BITMAP }, free: true }
    }
    return { entry: engine.version >= 3 ? { _tag: "Zero", hostOffset: 0, copied: false } : { _tag: "Unallocated" }, free: true }
  }
}

/**
 * Drops whole clusters [offset, offset + length) completely (QEMU's
 * full discard, used when shrinking): every entry becomes unallocated,
 * whatever the version or backing file, and host clusters are freed.
 */
export function dropClusters(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<void, EngineFailure> {
  return changeClusters(engine, offset, length, false, (old) => {
    if (old._tag === "Unallocated") return undefined
    if (engine.geometry.extendedL2) {
      if (old._tag === "Subclusters" && old.hostOffset === 0 && !old.copied && old.allocatedMask === 0 && old.zeroMask === 0) return undefined
      return { entry: { _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: 0 }, free: true }
    }
    return { entry: { _tag: "Unallocated" }, free: true }
  })
}

/**
 * Makes whole clusters [start, end) read as zeros with the v3 zero flag (or
 * all-zero subclusters), with the lock held and no allocation in flight
 * there (QEMU's zero_in_l2_slice). With `unmap` the host clusters are
 * freed; without, they stay allocated behind the flag (QEMU keeps them so
 * later writes need no allocation). Compressed clusters are always freed.
 */
export function zeroClustersHeld(engine: Qcow2Engine, start: number, end: number, unmap: boolean): Effect.Effect<void, EngineFailure> {
  return changeHeld(engine, start, end, true, zeroChange(engine, unmap))
}

const zeroChange = (engine: Qcow2Engine, unmap: boolean): EntryChange => (old) => {
    const free = old._tag === "Compressed" || (unmap && hasHostData(engine, old))
    let entry: Exclude<L2Entry, { _tag: "Invalid" }>
    if (engine.geometry.extendedL2) {
      const keep = !free && old._tag === "Subclusters"
      entry = {
        _tag: "Subclusters",
        hostOffset: keep ? old.hostOffset : 0,
        copied: keep ? old.copied : false,
        allocatedMask: 0,
        zeroMask: ALL_ZERO_BITMAP
      }
      if (keep && old.allocatedMask === 0 && old.zeroMask === ALL_ZERO_BITMAP) return undefined
      if (!keep && old._tag === "Subclusters" && old.hostOffset === 0 && !old.copied && old.allocatedMask === 0 && old.zeroMask === ALL_ZERO_BITMAP) return undefined
    } else {
      if (!free) return old._tag === "Zero" ? undefined : "SetZeroFlag"
      entry = { _tag: "Zero", hostOffset: 0, copied: false }
    }
    return { entry, free }
  }

/**
 * Sets subclusters [offset, offset + length) of one cluster (subcluster
 * aligned, extended L2 only) to read as zeros, with the lock held and no
 * allocation in flight over the cluster (QEMU's zero_l2_subclusters).
 * Returns false when the cluster is compressed (QEMU cannot zero part of
 * one: the caller writes zeros instead).
 */
export function zeroSubclustersHeld(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<boolean, EngineFailure> {
  const g = engine.geometry
  const cluster = Math.floor(offset / g.clusterSize)
  return Effect.gen(function* () {
    const l2Offset = yield* prepareL2ForWrite(engine, offset)
    const table = yield* loadL2(engine, l2Offset)
    const index = cluster % g.l2Entries
    const old = readL2EntryForIo(table, index, g)
    if (old._tag === "Invalid") return yield* engine.integrity.markCorrupt(readDamageMessage(old, { l2Offset, index }), offset)
    if (old._tag !== "Subclusters") return false
    const first = Math.floor((offset % g.clusterSize) / g.subclusterSize)
    const count = Math.ceil(length / g.subclusterSize)
    const mask = count >= 32 ? 0xffffffff : ((((1 << count) - 1) << first) >>> 0)
    const next = { ...old, allocatedMask: (old.allocatedMask & ~mask) >>> 0, zeroMask: (old.zeroMask | mask) >>> 0 }
    if (next.allocatedMask === old.allocatedMask && next.zeroMask === old.zeroMask) return true
    writeL2Entry(table, index, next, g)
    engine.l2Cache.markDirty(l2Offset)
    return true
  })
}

/** `makeTable`: an L2 table is made where none is mapped even when no entry changes. */
function changeClusters(engine: Qcow2Engine, offset: number, length: number, makeTable: boolean, change: EntryChange): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const cs = g.clusterSize
    const coverage = l2Coverage(engine)
    let position = offset
    const end = offset + length
    while (position < end) {
      const tableEnd = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
      const body = changeInTable(engine, position, tableEnd, makeTable, change)
      yield* engine.inflight.whenSettled(engine.lock, Math.floor(position / cs), Math.floor((tableEnd - 1) / cs), body)
      position = tableEnd
    }
  })
}

/** Changes the entries of guest clusters [start, end), table by table, with the lock held and no allocation in flight there. */
function changeHeld(engine: Qcow2Engine, start: number, end: number, makeTable: boolean, change: EntryChange): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const coverage = l2Coverage(engine)
    for (let position = start; position < end; ) {
      const tableEnd = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
      yield* changeInTable(engine, position, tableEnd, makeTable, change)
      position = tableEnd
    }
  })
}

/** Changes the entries of guest clusters [start, end) of one L2 table. Call with the lock held and no allocation in flight there. */
function changeInTable(engine: Qcow2Engine, start: number, end: number, makeTable: boolean, change: EntryChange): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const cs = g.clusterSize
    const firstCluster = Math.floor(start / cs)
    const lastCluster = Math.floor((end - 1) / cs)
    const mapped = yield* l2TableOffset(engine, start)
    // Nothing mapped here: a full discard leaves it so.
    if (mapped === 0 && !makeTable && change({ _tag: "Unallocated" }) === undefined) return
    const l2Offset = yield* prepareL2ForWrite(engine, start)
    const table = yield* loadL2(engine, l2Offset)
    const released: HostRange[] = []
    let changed = false
    for (let cluster = firstCluster; cluster <= lastCluster; cluster++) {
      const index = cluster % g.l2Entries
      const old = readL2EntryForIo(table, index, g)
      if (old._tag === "Invalid") {
        // An unaligned data cluster that the change frees: the entry goes,
        // the cluster is not freed (QEMU's qcow2_free_any_cluster reports it
        // as non-fatal corruption); zeroed without unmapping, it keeps its
        // bits under the flag, as any standard entry does. Any other damage
        // is fatal.
        const next = old.damage === "Unaligned" ? change(unalignedStandIn(old, g.extendedL2)) : undefined
        if (next === "SetZeroFlag") {
          setL2ZeroFlag(table, index, g)
          changed = true
          continue
        }
        if (next === undefined || !next.free) return yield* engine.integrity.markCorrupt(readDamageMessage(old, { l2Offset, index }), cluster * cs)
        writeL2Entry(table, index, next.entry, g)
        changed = true
        engine.integrity.reportNonFatal(freeDamageMessage(old))
        continue
      }
      const next = change(old)
      if (next === undefined) continue
      if (next === "SetZeroFlag") {
        setL2ZeroFlag(table, index, g)
        changed = true
        continue
      }
      writeL2Entry(table, index, next.entry, g)
      changed = true
      const range = next.free ? replacedHostRange(engine, old) : undefined
      if (range !== undefined) released.push(range)
    }
    if (!changed) return
    engine.l2Cache.markDirty(l2Offset)
    yield* releaseReplaced(engine, released, true)
  })
}
