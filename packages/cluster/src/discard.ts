import { Effect } from "effect"
import { readL2Entry, writeL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { ClusterContext, ClusterFailure } from "./context.js"
import { prepareL2ForWrite } from "./l1.js"
import { l2Coverage, l2TableOffset, loadL2 } from "./mapping.js"
import { forgetDecompressed } from "./read.js"
import { Deferred } from "effect"

const ALL_ZERO_BITMAP = 0xffffffff

/** An entry with host data behind it (QEMU's "allocated" cluster types). */
const hasHostData = (entry: L2Entry): boolean =>
  entry._tag === "Normal" ||
  entry._tag === "Compressed" ||
  (entry._tag === "Zero" && entry.hostOffset !== 0) ||
  (entry._tag === "Subclusters" && (entry.hostOffset !== 0 || entry.copied))

type EntryChange = (entry: Exclude<L2Entry, { _tag: "Invalid" }>) => {
  readonly entry: Exclude<L2Entry, { _tag: "Invalid" }>
  readonly free: boolean
} | undefined

/**
 * Discards whole clusters [offset, offset + length) (both cluster aligned,
 * except a last partial cluster at the end of the image). What is left
 * reads as QEMU's discard leaves it: zeros on v3 images (zero flag, or
 * all-zero subclusters), the backing file on v2 images; host clusters are
 * freed. Unallocated clusters without a backing file stay as they are.
 */
export function discardClusters(ctx: ClusterContext, offset: number, length: number): Effect.Effect<void, ClusterFailure> {
  const hasBacking = ctx.backing !== undefined
  return changeClusters(ctx, offset, length, false, (old) => {
    if (!(hasBacking || hasHostData(old))) return undefined
    if (ctx.geometry.extendedL2) {
      return { entry: { _tag: "Subclusters", hostOffset: 0, copied: false, allocatedMask: 0, zeroMask: ALL_ZERO_BITMAP }, free: true }
    }
    return { entry: ctx.version >= 3 ? { _tag: "Zero", hostOffset: 0, copied: false } : { _tag: "Unallocated" }, free: true }
  })
}

/**
 * Makes whole clusters read as zeros with the v3 zero flag (or all-zero
 * subclusters). With `unmap` the host clusters are freed; without, they stay
 * allocated behind the flag (QEMU keeps them so later writes need no
 * allocation). Compressed clusters are always freed.
 */
export function zeroClusters(ctx: ClusterContext, offset: number, length: number, unmap: boolean): Effect.Effect<void, ClusterFailure> {
  return changeClusters(ctx, offset, length, true, (old) => {
    const free = old._tag === "Compressed" || (unmap && hasHostData(old))
    let entry: Exclude<L2Entry, { _tag: "Invalid" }>
    if (ctx.geometry.extendedL2) {
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
      const host = !free && (old._tag === "Normal" || old._tag === "Zero") ? old.hostOffset : 0
      const copied = !free && (old._tag === "Normal" || old._tag === "Zero") ? old.copied : false
      entry = { _tag: "Zero", hostOffset: host, copied }
      if (old._tag === "Zero" && old.hostOffset === host && old.copied === copied) return undefined
    }
    return { entry, free }
  })
}

/**
 * Sets subclusters [offset, offset + length) of one cluster (subcluster
 * aligned, extended L2 only) to read as zeros. Returns false when the
 * cluster is compressed (the caller writes zeros instead).
 */
export function zeroSubclusters(ctx: ClusterContext, offset: number, length: number): Effect.Effect<boolean, ClusterFailure> {
  return ctx.lock.withPermits(1)(
    Effect.gen(function* () {
      const g = ctx.geometry
      const cluster = Math.floor(offset / g.clusterSize)
      yield* awaitInFlight(ctx, cluster, cluster)
      const l2Offset = yield* prepareL2ForWrite(ctx, offset)
      const table = yield* loadL2(ctx, l2Offset)
      const index = cluster % g.l2Entries
      const old = readL2Entry(table, index, g)
      if (old._tag === "Invalid") return yield* ctx.corrupt(`L2 entry for guest offset ${cluster * g.clusterSize}: ${old.reason}`, offset)
      if (old._tag !== "Subclusters") return false
      const first = Math.floor((offset % g.clusterSize) / g.subclusterSize)
      const count = Math.ceil(length / g.subclusterSize)
      const mask = count >= 32 ? 0xffffffff : ((((1 << count) - 1) << first) >>> 0)
      const next = { ...old, allocatedMask: (old.allocatedMask & ~mask) >>> 0, zeroMask: (old.zeroMask | mask) >>> 0 }
      if (next.allocatedMask === old.allocatedMask && next.zeroMask === old.zeroMask) return true
      writeL2Entry(table, index, next, g)
      ctx.l2Cache.markDirty(l2Offset)
      return true
    })
  )
}

/**
 * With the metadata lock held: waits (lock released meanwhile) until no
 * allocation is in flight over guest clusters [first, last].
 */
function awaitInFlight(ctx: ClusterContext, first: number, last: number): Effect.Effect<void> {
  return Effect.gen(function* () {
    for (;;) {
      const waiting = ctx.inflight.overlapping(first, last)
      if (waiting === undefined) return
      yield* Effect.andThen(ctx.lock.release(1), Effect.andThen(Deferred.await(waiting), ctx.lock.take(1)))
    }
  })
}

function changeClusters(
  ctx: ClusterContext,
  offset: number,
  length: number,
  forZero: boolean,
  change: EntryChange
): Effect.Effect<void, ClusterFailure> {
  return Effect.gen(function* () {
    const g = ctx.geometry
    const cs = g.clusterSize
    const coverage = l2Coverage(ctx)
    let position = offset
    const end = offset + length
    while (position < end) {
      const tableEnd = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
      yield* ctx.lock.withPermits(1)(changeInTable(ctx, position, tableEnd, forZero, change))
      position = tableEnd
    }
  })
}

function changeInTable(
  ctx: ClusterContext,
  start: number,
  end: number,
  forZero: boolean,
  change: EntryChange
): Effect.Effect<void, ClusterFailure> {
  return Effect.gen(function* () {
    const g = ctx.geometry
    const cs = g.clusterSize
    const firstCluster = Math.floor(start / cs)
    const lastCluster = Math.floor((end - 1) / cs)
    yield* awaitInFlight(ctx, firstCluster, lastCluster)
    let l2Offset = yield* l2TableOffset(ctx, start)
    if (l2Offset === 0) {
      // Nothing mapped here: only a zero write (or a discard over a backing
      // file) needs entries, so only then create the table.
      const probe = change({ _tag: "Unallocated" })
      if (probe === undefined) return
      l2Offset = yield* prepareL2ForWrite(ctx, start)
    } else {
      l2Offset = yield* prepareL2ForWrite(ctx, start)
    }
    const table = yield* loadL2(ctx, l2Offset)
    const frees: Array<{ offset: number; length: number }> = []
    let freedCompressed = false
    let changed = false
    for (let cluster = firstCluster; cluster <= lastCluster; cluster++) {
      const index = cluster % g.l2Entries
      const old = readL2Entry(table, index, g)
      if (old._tag === "Invalid") return yield* ctx.corrupt(`L2 entry for guest offset ${cluster * cs}: ${old.reason}`, cluster * cs)
      const next = change(old)
      if (next === undefined) continue
      writeL2Entry(table, index, next.entry, g)
      changed = true
      if (next.free && !ctx.externalData) {
        if (old._tag === "Compressed") {
          frees.push({ offset: old.hostOffset, length: old.compressedSize })
          freedCompressed = true
        } else if ((old._tag === "Normal" || old._tag === "Zero" || old._tag === "Subclusters") && old.hostOffset !== 0) {
          frees.push({ offset: old.hostOffset, length: cs })
        }
      }
    }
    if (!changed) return
    ctx.l2Cache.markDirty(l2Offset)
    if (frees.length > 0) {
      if (!ctx.lazyRefcounts) yield* ctx.refcounts.cache.dependOn(ctx.l2Cache)
      for (const f of frees) yield* ctx.refcounts.free(f.offset, f.length)
      if (freedCompressed) forgetDecompressed(ctx)
    }

  })
}
