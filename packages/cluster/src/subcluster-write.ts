import { readL2EntryForIo } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { isOwned } from "./l2.js"

/**
 * Planning helpers of the extended-L2 write path (write.ts): which
 * subclusters a write copies and marks allocated, and which damaged entry
 * stops it (QEMU's calculate_l2_meta and qcow2_alloc_cluster_link_l2).
 */

/** Every subcluster of a cluster (a standard L2 write plan carries it too). */
export const ALL_SUBCLUSTERS = 0xffffffff

const COPIED_BIT = 1n << 63n
const OFFSET_BITS = 0x00fffffffffffe00n

/**
 * An entry with invalid subcluster bits among the clusters QEMU handles in
 * one go with the first of a write (`count` clusters from `firstIndex`): the
 * clusters in a row that it keeps (COPIED, contiguous from `ownedHost`) or
 * that all need a new host cluster (count_single_write_clusters). QEMU's
 * calculate_l2_meta fails for the whole run before writing anything, so the
 * write stops here too, before its first cluster is touched.
 */
export function damagedInRun(
  engine: Qcow2Engine,
  table: Uint8Array,
  firstIndex: number,
  count: number,
  ownedHost: number | undefined
): { readonly entry: Extract<L2Entry, { _tag: "Invalid" }>; readonly index: number } | undefined {
  const g = engine.geometry
  for (let i = 1; i < count; i++) {
    const entry = readL2EntryForIo(table, firstIndex + i, g)
    if (entry._tag === "Invalid") {
      const kept = (entry.raw & COPIED_BIT) !== 0n
      if (ownedHost !== undefined && (!kept || Number(entry.raw & OFFSET_BITS) !== ownedHost + i * g.clusterSize)) return undefined
      if (ownedHost === undefined && kept) return undefined
      return entry.damage === "SubclusterBitmap" ? { entry, index: firstIndex + i } : undefined
    }
    if (ownedHost !== undefined ? !(isOwned(engine, entry) && entry._tag === "Subclusters" && entry.hostOffset === ownedHost + i * g.clusterSize) : isOwned(engine, entry)) return undefined
  }
  return undefined
}

/** Bits first..last of a subcluster bitmap. */
export const subclusterRange = (first: number, last: number): number => (last - first === 31 ? ALL_SUBCLUSTERS : (((1 << (last - first + 1)) - 1) << first) >>> 0)

/**
 * Which subclusters of an extended-L2 cluster a write to subclusters
 * firstSub..lastSub writes to the host (the request and its copy-on-write
 * head and tail), and the bitmap the entry starts from (QEMU's
 * calculate_l2_meta and qcow2_alloc_cluster_link_l2):
 * - no host cluster yet, or one this image owns: just the touched
 *   subclusters, the rest of the bitmap stays;
 * - a host cluster shared with a snapshot: from the first allocated
 *   subcluster (or the write, if before it) to the last allocated one (or
 *   the write, if after it) — the allocated data moves to the new cluster,
 *   zero and unallocated subclusters outside that range keep their bits;
 * - compressed: the whole cluster, all of it allocated afterwards (the
 *   bitmap of a compressed entry, which should be 0, is not kept).
 */
export function copiedSubclusters(
  engine: Qcow2Engine,
  entry: Exclude<L2Entry, { _tag: "Invalid" }>,
  firstSub: number,
  lastSub: number
): { readonly first: number; readonly last: number; readonly allocatedMask: number; readonly zeroMask: number } {
  if (entry._tag !== "Subclusters") return { first: 0, last: 31, allocatedMask: 0, zeroMask: 0 }
  const hasHost = entry.hostOffset !== 0 || engine.externalData
  const allocated = entry.allocatedMask
  if (!hasHost || isOwned(engine, entry) || allocated === 0) {
    return { first: firstSub, last: lastSub, allocatedMask: allocated, zeroMask: entry.zeroMask }
  }
  const lowest = 31 - Math.clz32(allocated & -allocated)
  const highest = 31 - Math.clz32(allocated)
  return { first: Math.min(firstSub, lowest), last: Math.max(lastSub, highest), allocatedMask: allocated, zeroMask: entry.zeroMask }
}
