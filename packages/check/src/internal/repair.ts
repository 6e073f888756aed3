import { Effect } from "effect"
import { EntryBits, type MetadataKind, hex64, rawHostOffset, writeRefcount, writeRefcountTableEntry } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { ClusterType, allocatedOffset, l1Entry, l2Entry, l2Raw, rawClusterType, zeroWord } from "./entries.js"
import { type CheckAborted, EIO, abort } from "./io.js"
import { L2Reader } from "./l2-reader.js"
import type { Fix, Pass } from "./pass.js"
import { UNREADABLE } from "./stored.js"

/**
 * Compares the counted references with the stored refcounts (QEMU's
 * compare_refcounts). Stored < counted is a corruption ("ERROR cluster …"),
 * stored > counted a leak ("Leaked cluster …"); with the matching `fix` bit
 * the stored refcount is set to the count ("Repairing cluster …"). A stored
 * refcount of 0 for a referenced cluster asks for a rebuild of the refcount
 * structure instead. Returns the highest cluster in use.
 */
export function compareRefcounts(p: Pass, fix: Fix): Effect.Effect<number, StorageError> {
  return Effect.gen(function* () {
    const { imrt, stored, img } = p
    const blockEntries = 2 ** img.refblockBits
    const cs = img.clusterSize
    const freed: Array<number> = []
    let highest = 0
    for (let start = 0; start < imrt.size; start += blockEntries) {
      const blockIndex = start / blockEntries
      yield* stored.load(blockIndex)
      const end = Math.min(start + blockEntries, imrt.size)
      for (let i = start; i < end; i++) {
        const r1 = stored.get(i)
        if (r1 === UNREADABLE) {
          p.log(`Can't get refcount for cluster ${i}: ${EIO}`)
          p.tally.checkErrors++
          continue
        }
        const r2 = imrt.get(i)
        if (r1 > 0 || r2 > 0) highest = i
        if (r1 === r2) continue
        let fixes: "leaks" | "corruptions" | undefined
        if (r1 === 0) p.rebuild = true
        else if (r1 > r2 && fix.leaks) fixes = "leaks"
        else if (r1 < r2 && fix.errors) fixes = "corruptions"
        p.log(`${fixes !== undefined ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked"} cluster ${i} refcount=${stored.text(i)} reference=${r2}`)
        if (fixes !== undefined) {
          stored.set(i, r2)
          if (r2 === 0) freed.push(i)
          if (fixes === "leaks") p.tally.leaksFixed++
          else p.tally.corruptionsFixed++
          continue
        }
        if (r1 < r2) p.tally.corruptions++
        else p.tally.leaks++
      }
    }
    yield* stored.writeBack()
    for (const c of freed) yield* p.io.discard(c * cs, cs)
    return highest
  })
}

interface CopiedScan {
  next: number
  dirty: number
}

/**
 * Checks (and with `repair` fixes in `table`) the COPIED flags of the L2
 * entries from `scan.next` on, in plain code. Returns a cluster whose
 * refcount block must be loaded before the scan can go on, or -1 at the end.
 */
function scanCopied(p: Pass, table: Uint8Array, scan: CopiedScan, repair: boolean): number {
  const { img, stored, tally } = p
  const cs = img.clusterSize
  const step = img.l2EntryBytes
  const n = img.l2Entries
  for (let j = scan.next; j < n; j++) {
    if (!img.extendedL2 && zeroWord(table, j * step)) continue
    const e = l2Entry(img, table, j)
    let offset: number
    let copied: boolean
    if (e._tag === "Invalid") {
      const raw = l2Raw(img, table, j)
      const t = rawClusterType(raw, img.extendedL2, img.hasDataFile)
      if (t !== ClusterType.Normal && t !== ClusterType.ZeroAlloc) continue
      offset = rawHostOffset(raw.hi, raw.lo)
      copied = (raw.hi & EntryBits.Copied) !== 0
    } else {
      offset = allocatedOffset(e, img.hasDataFile)
      if (offset < 0) continue
      copied = "copied" in e && e.copied
    }
    let count = 1
    if (!img.hasDataFile) {
      const cluster = Math.floor(offset / cs)
      if (stored.needsLoad(cluster)) {
        scan.next = j
        return cluster
      }
      count = stored.get(cluster)
    }
    if (count === UNREADABLE) continue
    if ((count === 1) !== copied) {
      tally.corruptions++
      const { hi, lo } = l2Raw(img, table, j)
      p.log(`${repair ? "Repairing" : "ERROR"} OFLAG_COPIED data cluster: l2_entry=${hex64(hi, lo)} refcount=${img.hasDataFile ? count : stored.text(Math.floor(offset / cs))}`)
      if (repair) {
        const fixed = count === 1 ? (hi | EntryBits.Copied) >>> 0 : (hi & ~EntryBits.Copied) >>> 0
        new DataView(table.buffer, table.byteOffset, table.byteLength).setUint32(j * step, fixed)
        scan.dirty++
      }
    }
  }
  scan.next = n
  return -1
}

const OL_ACTIVE_L1: ReadonlyArray<MetadataKind> = ["active L1 table"]
const OL_ACTIVE_L2: ReadonlyArray<MetadataKind> = ["active L2 table"]

/**
 * Checks the COPIED flag of every active L1 and L2 entry against the stored
 * refcounts (QEMU's check_oflag_copied): it must be set exactly when the
 * refcount is 1 (always for data in an external data file). Repairs with
 * `fix.errors`, or with `fix.leaks` when the refcounts are known good.
 */
export function checkOflagCopied(p: Pass, fix: Fix): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const { img, stored, tally } = p
    const cs = img.clusterSize
    const repair = fix.errors ? true : fix.leaks ? tally.checkErrors === 0 && tally.corruptions === 0 && tally.leaks === 0 : false
    const l1 = img.activeL1
    const n = Math.min(img.l1Size, Math.floor(l1.length / 8))
    let wrote = false
    const reader = new L2Reader(p, l1, n)
    for (let i = 0; i < n; i++) {
      const { hi, lo, l2Offset, copied } = l1Entry(l1, i)
      if (l2Offset === 0) continue
      const l2Cluster = Math.floor(l2Offset / cs)
      yield* stored.loadFor(l2Cluster)
      const refcount = stored.get(l2Cluster)
      if (refcount === UNREADABLE) continue
      if ((refcount === 1) !== copied) {
        tally.corruptions++
        p.log(`${repair ? "Repairing" : "ERROR"} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(hi, lo)} refcount=${stored.text(l2Cluster)}`)
        if (repair) {
          const fixedHi = refcount === 1 ? (hi | EntryBits.Copied) >>> 0 : (hi & ~EntryBits.Copied) >>> 0
          new DataView(l1.buffer, l1.byteOffset, l1.byteLength).setUint32(i * 8, fixedHi)
          const where = img.l1TableOffset + i * 8
          if (p.metadata.find(where, 8, OL_ACTIVE_L1) !== undefined) {
            tally.checkErrors++
            return yield* abort(EIO)
          }
          yield* p.io.write(where, l1.slice(i * 8, i * 8 + 8))
          wrote = true
          tally.corruptions--
          tally.corruptionsFixed++
        }
      }
      if (l2Offset >= img.fileSize) continue
      const table = yield* reader.read(i, l2Offset)
      const scan: CopiedScan = { next: 0, dirty: 0 }
      for (;;) {
        const missing = scanCopied(p, table, scan, repair)
        if (missing < 0) break
        yield* stored.loadFor(missing)
      }
      const dirty = scan.dirty
      if (dirty > 0) {
        if (p.metadata.find(l2Offset, cs, OL_ACTIVE_L2) !== undefined) {
          p.log(`ERROR: Could not write L2 table; metadata overlap check failed: ${EIO}`)
          tally.checkErrors++
          return yield* abort(EIO)
        }
        yield* p.io.write(l2Offset, table)
        wrote = true
        tally.corruptions -= dirty
        tally.corruptionsFixed += dirty
      }
    }
    if (wrote) yield* p.io.flush()
  })
}

/** Refcount structures may be overwritten by a rebuild: they are being replaced. */
const OL_REBUILD: ReadonlyArray<MetadataKind> = ["refcount block", "refcount table"]

/**
 * Writes the refcount blocks for clusters `[first, end)` from the counted
 * references, allocating each new block in the counts themselves (QEMU's
 * rebuild_refcounts_write_refblocks). Returns whether the new refcount
 * table had to grow.
 */
function writeRefblocks(
  p: Pass,
  first: number,
  endCluster: number,
  reftable: { entries: Array<number> }
): Effect.Effect<boolean, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const { img, imrt } = p
    const cs = img.clusterSize
    const blockEntries = 2 ** img.refblockBits
    const cursor = { firstFree: 0 }
    let grown = false
    let end = endCluster
    for (let cluster = first; cluster < end; cluster++) {
      if (imrt.get(cluster) === 0) continue
      const blockIndex = Math.floor(cluster / blockEntries)
      const blockStart = blockIndex * blockEntries
      let blockOffset: number
      if (blockIndex < reftable.entries.length && reftable.entries[blockIndex] !== 0) {
        blockOffset = reftable.entries[blockIndex]!
      } else {
        if (cursor.firstFree < blockStart) cursor.firstFree = blockStart
        const blockCluster = imrt.allocate(1, cursor)
        blockOffset = blockCluster * cs
        if (blockCluster >= end) end = blockCluster + 1
        if (reftable.entries.length <= blockIndex) {
          const entries = Math.ceil(((blockIndex + 1) * 8) / cs) * (cs / 8)
          while (reftable.entries.length < entries) reftable.entries.push(0)
          grown = true
        }
        reftable.entries[blockIndex] = blockOffset
      }
      if (p.metadata.find(blockOffset, cs, OL_REBUILD) !== undefined) {
        p.log(`ERROR writing refblock: ${EIO}`)
        p.tally.checkErrors++
        return yield* abort(EIO)
      }
      const block = new Uint8Array(cs)
      const last = Math.min(blockEntries, imrt.size - blockStart)
      for (let i = 0; i < last; i++) {
        const v = imrt.get(blockStart + i)
        if (v !== 0) writeRefcount(block, i, img.refcountOrder, v)
      }
      yield* p.io.write(blockOffset, block)
      cluster = blockStart + blockEntries - 1
    }
    return grown
  })
}

/**
 * Replaces the whole refcount structure with one built from the counted
 * references (QEMU's rebuild_refcount_structure): new refcount blocks and a
 * new refcount table are allocated in clusters nobody references, written,
 * flushed, and only then does the header switch to them (and is flushed).
 * The old structure is left behind as leaked clusters.
 */
export function rebuildRefcountStructure(p: Pass): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const { img, imrt } = p
    const cs = img.clusterSize
    const reftable = { entries: [] as Array<number> }
    let changed = yield* writeRefblocks(p, 0, imrt.size, reftable)
    let reftableOffset = -1
    let reftableClusters = 0
    do {
      reftableClusters = Math.ceil((reftable.entries.length * 8) / cs)
      const start = imrt.allocate(reftableClusters, { firstFree: 0 })
      reftableOffset = start * cs
      changed = yield* writeRefblocks(p, start, start + reftableClusters, reftable)
    } while (changed)
    const length = reftable.entries.length * 8
    if (p.metadata.find(reftableOffset, length, OL_REBUILD) !== undefined) {
      p.log(`ERROR writing reftable: ${EIO}`)
      p.tally.checkErrors++
      return yield* abort(EIO)
    }
    const table = new Uint8Array(length)
    reftable.entries.forEach((o, i) => writeRefcountTableEntry(table, i, o))
    yield* p.io.write(reftableOffset, table)
    yield* p.io.flush()
    const header = new Uint8Array(12)
    const hv = new DataView(header.buffer)
    hv.setUint32(0, Math.floor(reftableOffset / 2 ** 32))
    hv.setUint32(4, reftableOffset >>> 0)
    hv.setUint32(8, reftableClusters)
    yield* p.io.write(48, header)
    yield* p.io.flush()
    img.reftableOffset = reftableOffset
    img.reftableEntries = reftable.entries.length
    img.reftable = table
    img.fileSize = yield* p.io.size()
    p.stored.reset()
    p.metadata.invalidate()
  })
}

