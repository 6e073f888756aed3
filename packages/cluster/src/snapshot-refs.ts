import { Effect } from "effect"
import { Limits, readL1Entry, readL2EntryForIo, writeL1Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import type { HostRange } from "./l2.js"
import { loadL2 } from "./mapping.js"

/** Bit 31 of an entry's high word: COPIED (refcount exactly 1). */
const COPIED = 0x80000000

/**
 * The L2 table offset of entry `index` of an L1 table, 0 when empty.
 * Fails for an offset past 2^53 or one that is not cluster aligned (QEMU:
 * "L2 table offset … unaligned").
 */
function l2OffsetAt(engine: Qcow2Engine, l1: Uint8Array, index: number): number | ClusterError {
  let offset: number
  try {
    offset = readL1Entry(l1, index).l2Offset
  } catch {
    return new ClusterError({ reason: "Corrupt", message: `L1 entry ${index} points past 2^53`, errno: "EIO" })
  }
  if (offset % engine.geometry.clusterSize !== 0) {
    return new ClusterError({ reason: "Corrupt", message: `L2 table offset 0x${offset.toString(16)} unaligned (L1 index: 0x${index.toString(16)})`, errno: "EIO" })
  }
  return offset
}

/**
 * The host ranges one L2 table references: each data cluster (a
 * preallocated zero cluster too) and each compressed cluster's byte range,
 * in table order, adjacent whole clusters merged.
 */
function referencedRanges(engine: Qcow2Engine, table: Uint8Array, l2Offset: number): HostRange[] | ClusterError {
  const { geometry } = engine
  const cs = geometry.clusterSize
  const ranges: HostRange[] = []
  let run: { offset: number; length: number } | undefined
  for (let j = 0; j < geometry.l2Entries; j++) {
    const entry = readL2EntryForIo(table, j, geometry, false)
    switch (entry._tag) {
      case "Compressed":
        if (run !== undefined) ranges.push(run)
        run = undefined
        ranges.push({ offset: entry.hostOffset, length: entry.compressedSize })
        break
      case "Normal":
      case "Zero":
      case "Subclusters":
        if (entry.hostOffset === 0) break
        if (run !== undefined && run.offset + run.length === entry.hostOffset) {
          run.length += cs
        } else {
          if (run !== undefined) ranges.push(run)
          run = { offset: entry.hostOffset, length: cs }
        }
        break
      case "Unallocated":
        break
      case "Invalid":
        return new ClusterError({
          reason: "InvalidArgument",
          message: `L2 entry ${j} of the table at 0x${l2Offset.toString(16)} is invalid (${entry.reason})`,
          errno: "EFBIG"
        })
    }
  }
  if (run !== undefined) ranges.push(run)
  return ranges
}

/**
 * A reference to a cluster past the clusters this image counts. QEMU's
 * update_refcount would first create the refcount block for it (growing
 * the refcount table) and then fail with EAGAIN, "retry", which a
 * snapshot does not do; when the table would pass its 8 MiB limit it
 * fails with EFBIG instead. The errno is QEMU's; nothing is allocated
 * here for such a cluster.
 */
function pastTheEnd(blockEntries: number, clusterSize: number, offset: number): ClusterError {
  const blocksUsed = Math.ceil(Math.floor(offset / clusterSize) / blockEntries)
  return new ClusterError({
    reason: "InvalidArgument",
    message: `cluster at 0x${offset.toString(16)} lies past the end of the image`,
    errno: blocksUsed > Limits.maxRefcountTableBytes / 8 ? "EFBIG" : "EAGAIN"
  })
}

/**
 * Adds `addend` to the refcount of every cluster an L1 table reaches: each
 * L2 table once per L1 entry naming it, and every cluster its entries use
 * (compressed clusters by their host byte range), as QEMU's
 * qcow2_update_snapshot_refcount does for a snapshot taken, reverted to or
 * deleted. COPIED flags are left alone (see `recomputeCopied`).
 *
 * An increase that fails part-way (a refcount would overflow
 * refcount_bits) undoes the increases it made, so the image keeps its
 * refcounts. A decrease drops L2 tables whose last reference goes from
 * the L2 cache, and its frees pass discards on (QEMU's
 * QCOW2_DISCARD_SNAPSHOT): run it inside `withDiscards`. Call with the
 * metadata lock held.
 */
export function adjustReachable(engine: Qcow2Engine, l1: Uint8Array, entries: number, addend: 1 | -1): Effect.Effect<void, EngineFailure> {
  const refcounts = engine.refcounts
  const cs = engine.geometry.clusterSize
  const done: HostRange[] = []
  const change = (range: HostRange): Effect.Effect<void, EngineFailure> => {
    if (addend < 0) return refcounts.free(range.offset, range.length, true)
    if (range.offset + range.length > refcounts.endOfAllocatedClusters * cs) return Effect.fail(pastTheEnd(refcounts.blockEntries, cs, range.offset))
    return Effect.map(refcounts.reference(range.offset, range.length), () => {
      done.push(range)
    })
  }
  const walk = Effect.gen(function* () {
    for (let i = 0; i < entries; i++) {
      const l2Offset = l2OffsetAt(engine, l1, i)
      if (typeof l2Offset !== "number") return yield* l2Offset
      if (l2Offset === 0) continue
      const table = yield* loadL2(engine, l2Offset)
      const ranges = referencedRanges(engine, table, l2Offset)
      if (!Array.isArray(ranges)) return yield* ranges
      for (const range of ranges) yield* change(range)
      yield* change({ offset: l2Offset, length: cs })
      if (addend < 0 && (yield* refcounts.get(l2Offset / cs)) === 0) engine.l2Cache.invalidate(l2Offset)
    }
    if (addend < 0) engine.decompressed.forget()
  })
  if (addend < 0) return walk
  return Effect.catch(walk, (error) =>
    Effect.andThen(
      Effect.ignore(Effect.forEach(done.reverse(), (range) => refcounts.free(range.offset, range.length), { discard: true })),
      Effect.fail(error)
    )
  )
}

/**
 * Sets COPIED in the active L1 table and its L2 tables exactly where the
 * refcount is 1, clears it everywhere else (QEMU's
 * qcow2_update_snapshot_refcount with addend 0; spec "Cluster mapping":
 * the flag is only accurate in the active tables). The L1 table is
 * written through when an entry changes; L2 tables go through the cache.
 * The refcounts it reads must already be durable: a COPIED flag reaching
 * disk before the decrease that justifies it would let a write land in a
 * cluster a snapshot still uses. Call with the metadata lock held.
 */
export function recomputeCopied(engine: Qcow2Engine): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const { geometry, refcounts } = engine
    const cs = geometry.clusterSize
    const l1 = new Uint8Array(engine.l1.table)
    let l1Changed = false
    for (let i = 0; i < engine.l1.size; i++) {
      const l2Offset = l2OffsetAt(engine, l1, i)
      if (typeof l2Offset !== "number") return yield* l2Offset
      const wasCopied = (l1[i * 8]! & 0x80) !== 0
      if (l2Offset === 0) {
        if (wasCopied) {
          writeL1Entry(l1, i, 0, false)
          l1Changed = true
        }
        continue
      }
      const table = yield* loadL2(engine, l2Offset)
      let tableChanged = false
      for (let j = 0; j < geometry.l2Entries; j++) {
        const entry = readL2EntryForIo(table, j, geometry, false)
        let copied = false
        switch (entry._tag) {
          case "Normal":
          case "Zero":
          case "Subclusters":
            copied = entry.hostOffset !== 0 && (yield* refcounts.get(entry.hostOffset / cs)) === 1
            break
          case "Invalid":
            continue
          case "Compressed":
          case "Unallocated":
            break
        }
        const at = j * geometry.l2EntrySize
        const high = ((table[at]! << 24) | (table[at + 1]! << 16) | (table[at + 2]! << 8) | table[at + 3]!) >>> 0
        if (((high & COPIED) !== 0) !== copied) {
          table[at] = copied ? table[at]! | 0x80 : table[at]! & 0x7f
          tableChanged = true
        }
      }
      if (tableChanged) engine.l2Cache.markDirty(l2Offset)
      const copied = (yield* refcounts.get(l2Offset / cs)) === 1
      if (copied !== wasCopied) {
        writeL1Entry(l1, i, l2Offset, copied)
        l1Changed = true
      }
    }
    if (l1Changed) yield* engine.l1.overwrite(l1)
  })
}
