import { Effect } from "effect"
import type { StorageError } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"

/**
 * The request fast path (DESIGN.md "Where Effect sits"): the guest → host
 * mapping of a request from the L1 table and cached L2 tables alone, in
 * plain code, with no Effect, generator or allocation per cluster, and one
 * storage call per contiguous host run straight into (or from) the
 * caller's buffer. Whatever it does not handle — an L2 table not cached,
 * extended L2, encryption, compressed clusters, a backing file to read, a
 * cluster that needs an allocation, an entry a checked lookup would report
 * as corrupt, a store that takes debug events (blkdebug: the checked path
 * raises QEMU's read_aio / write_aio) — makes it answer undefined, and the
 * request takes the checked path (read.ts, write.ts), which also reports
 * any damage.
 */

const COPIED = 0x80000000
const COMPRESSED = 0x40000000
/** Bits 56-61 of the high word and 1-8 of the low word of a standard L2 entry. */
const RESERVED_HIGH = 0x3f000000
const RESERVED_LOW = 0x1fe
/** Answers of `entryHost` besides a host offset (which is never negative). */
const ZERO = -1
const UNALLOCATED = -2
const SLOW = -3

/**
 * The host offset of standard L2 entry `index`'s data, or ZERO /
 * UNALLOCATED for what reads as zeros / falls through, or SLOW. With
 * `owned` only a data cluster this image owns (COPIED: written in place)
 * counts, everything else is SLOW. Accepts exactly the entries
 * readL2Entry decodes as Normal, Zero or Unallocated (mapping.ts classify);
 * without `zeroFlag` (a version 2 image) the zero flag is SLOW too.
 */
function entryHost(table: Uint8Array, index: number, clusterMask: number, externalData: boolean, owned: boolean, zeroFlag: boolean): number {
  const o = index * 8
  const hi = ((table[o]! << 24) | (table[o + 1]! << 16) | (table[o + 2]! << 8) | table[o + 3]!) >>> 0
  const lo = ((table[o + 4]! << 24) | (table[o + 5]! << 16) | (table[o + 6]! << 8) | table[o + 7]!) >>> 0
  if (hi === 0 && lo === 0) return owned ? SLOW : UNALLOCATED
  if ((hi & (COMPRESSED | RESERVED_HIGH)) !== 0 || (lo & RESERVED_LOW) !== 0) return SLOW
  const offHi = hi & 0x00ffffff
  if (offHi > 0x1fffff) return SLOW
  const offLo = (lo & 0xfffffe00) >>> 0
  if ((offLo & clusterMask) !== 0) return SLOW
  if ((lo & 1) !== 0) return owned || !zeroFlag ? SLOW : ZERO
  const host = offHi * 4294967296 + offLo
  // Offset 0 is a cluster only in an external data file, and only with COPIED (QCOW2_CLUSTER_UNALLOCATED otherwise).
  if (host === 0 && (!externalData || (hi & COPIED) === 0)) return owned ? SLOW : UNALLOCATED
  if (owned && (hi & COPIED) === 0) return SLOW
  return host
}

/**
 * Reads guest bytes [offset, offset + into.length) (inside the virtual
 * size) when every L2 table involved is cached and every cluster is data,
 * zero, or unallocated without a backing file; undefined otherwise.
 * Zeros are filled now: call it when the request runs.
 */
export function readMapped(engine: Qcow2Engine, offset: number, into: Uint8Array): Effect.Effect<void, StorageError> | undefined {
  const g = engine.geometry
  if (engine.crypto !== undefined || g.extendedL2 || engine.storage.debugEvent !== undefined) return undefined
  const cs = g.clusterSize
  const clusterMask = cs - 1
  const externalData = engine.externalData
  const noBacking = engine.backing === undefined
  const zeroFlag = engine.version >= 3
  const end = offset + into.length
  let l1Index = -1
  let table: Uint8Array | undefined
  // The run being gathered: data at runHost, or zeros (runHost ZERO).
  let runStart = offset
  let runHost = SLOW
  let first: Effect.Effect<void, StorageError> | undefined
  let more: Array<Effect.Effect<void, StorageError>> | undefined
  const emit = (runEnd: number): void => {
    if (runHost === ZERO) {
      into.fill(0, runStart - offset, runEnd - offset)
      return
    }
    const read = engine.data.read(runHost, runEnd - runStart === into.length ? into : into.subarray(runStart - offset, runEnd - offset))
    if (first === undefined) first = read
    else (more ??= [first]).push(read)
  }
  let pos = offset
  while (pos < end) {
    const cluster = Math.floor(pos / cs)
    const index = Math.floor(cluster / g.l2Entries)
    if (index !== l1Index) {
      const l2Offset = engine.l1.plainL2Offset(index, false)
      if (l2Offset === undefined) return undefined
      table = l2Offset === 0 ? undefined : engine.l2Cache.lookup(l2Offset)
      if (l2Offset !== 0 && table === undefined) return undefined
      l1Index = index
    }
    let host = table === undefined ? UNALLOCATED : entryHost(table, cluster % g.l2Entries, clusterMask, externalData, false, zeroFlag)
    if (host === SLOW || (host === UNALLOCATED && !noBacking)) return undefined
    if (host === UNALLOCATED) host = ZERO
    else if (host !== ZERO) host += pos - cluster * cs
    const continues = host === ZERO ? runHost === ZERO : runHost >= 0 && host === runHost + (pos - runStart)
    if (!continues) {
      if (runHost !== SLOW) emit(pos)
      runStart = pos
      runHost = host
    }
    pos = Math.min(end, (cluster + 1) * cs)
  }
  if (runHost !== SLOW) emit(end)
  if (more !== undefined) return Effect.all(more, { concurrency: "unbounded", discard: true })
  return first ?? Effect.void
}

/**
 * The host offset where guest bytes [offset, offset + length) can be
 * written in place without the metadata lock: every cluster is data this
 * image owns (COPIED, in an L2 table with COPIED, cached) and the clusters
 * are contiguous on the host, no allocation is in flight over them, no
 * request has asked direct writes to stop (`InFlightAllocations.
 * admitsDirect`), the image may be written and the bytes hold no metadata.
 * Undefined otherwise (the locked path decides). The caller counts the
 * write with `beginDirect` before anything else runs.
 */
export function directWriteHost(engine: Qcow2Engine, offset: number, length: number): number | undefined {
  const g = engine.geometry
  const integrity = engine.integrity
  if (engine.crypto !== undefined || g.extendedL2 || integrity.readOnly || integrity.isCorrupt || !engine.inflight.admitsDirect || engine.storage.debugEvent !== undefined) {
    return undefined
  }
  // The snapshots' L2 tables are not indexed yet (overlap-check.inactive-l2): the checked path indexes them.
  if (!integrity.overlaps.inactiveL2Ready) return undefined
  const cs = g.clusterSize
  const firstCluster = Math.floor(offset / cs)
  const lastCluster = Math.floor((offset + length - 1) / cs)
  const index = Math.floor(firstCluster / g.l2Entries)
  if (Math.floor(lastCluster / g.l2Entries) !== index) return undefined
  const l2Offset = engine.l1.plainL2Offset(index, true)
  if (l2Offset === undefined) return undefined
  const table = engine.l2Cache.lookup(l2Offset)
  if (table === undefined) return undefined
  const clusterMask = cs - 1
  const externalData = engine.externalData
  const firstIndex = firstCluster % g.l2Entries
  const host = entryHost(table, firstIndex, clusterMask, externalData, true, true)
  if (host < 0) return undefined
  for (let i = 1; i <= lastCluster - firstCluster; i++) {
    if (entryHost(table, firstIndex + i, clusterMask, externalData, true, true) !== host + i * cs) return undefined
  }
  if (engine.inflight.overlapping(firstCluster, lastCluster) !== undefined) return undefined
  const at = host + (offset - firstCluster * cs)
  if (!externalData && !integrity.mayWriteNow(at, length)) return undefined
  return at
}
