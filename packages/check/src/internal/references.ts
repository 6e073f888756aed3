import { Effect } from "effect"
import { EntryBits, hex64, rawCompressedDescriptor, rawHostOffset, rawOffsetUnaligned } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { checkBitmapReferences } from "./bitmaps.js"
import { countRegion } from "./count.js"
import { ClusterType, allocatedOffset, l1Entry, l2Entry, l2Raw, offsetHex, rawClusterType, zeroWord } from "./entries.js"
import { type CheckAborted, EIO, abort } from "./io.js"
import { L2Reader } from "./l2-reader.js"
import type { Fix, Pass } from "./pass.js"
import { checkRefblocks } from "./refblocks.js"
import { readBounded } from "./state.js"

const altHex = (text: string): string => (text === "0" ? "0" : "0x" + text)

const OL_ACTIVE_L2 = ["active L2 table"] as const

/**
 * Turns an L2 entry whose preallocated (zero) cluster is unaligned into a
 * plain zero entry, in the table in memory (QEMU's fix_l2_entry_by_zero;
 * the caller writes the changed entries back). The caller has counted the
 * corruption; it moves to the fixed ones.
 */
function zeroEntry(p: Pass, table: Uint8Array, index: number): void {
  const size = p.img.l2EntryBytes
  const entry = table.subarray(index * size, index * size + size)
  const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength)
  if (p.img.extendedL2) {
    const zero = l2Raw(p.img, table, index).zeroMask
    entry.fill(0)
    view.setUint32(8, zero)
  } else {
    entry.fill(0)
    view.setUint32(4, EntryBits.Zero)
  }
  p.tally.corruptions--
  p.tally.corruptionsFixed++
}

/** Where a scan of an L2 table stands: the next entry and the fragmentation cursor. */
interface L2Scan {
  next: number
  nextContiguous: number
}

/** Counts the host cluster of a data (or preallocated zero) entry and updates the allocation figures. */
function countData(p: Pass, offset: number, hex: string | undefined, fragInfo: boolean, scan: L2Scan): void {
  const tally = p.tally
  if (fragInfo) {
    tally.allocatedClusters++
    if (scan.nextContiguous !== 0 && offset !== scan.nextContiguous) tally.fragmentedClusters++
    scan.nextContiguous = offset + p.img.clusterSize
  }
  if (!p.img.hasDataFile) countRegion(p, offset, p.img.clusterSize, hex)
}

/** Counts the host bytes of a compressed entry whose COPIED flag and subcluster bitmap were judged by the caller. */
function countCompressed(p: Pass, index: number, hi: number, lo: number, fragInfo: boolean): void {
  const img = p.img
  if (img.hasDataFile) {
    p.log(`ERROR compressed cluster ${index} with data file, entry=0x${hex64(hi, lo)}`)
    p.tally.corruptions++
    return
  }
  const d = rawCompressedDescriptor(hi, lo, img.clusterBits)
  countRegion(p, d.hostOffset, d.compressedSize, d.hostOffset > Number.MAX_SAFE_INTEGER ? hex64(d.offsetHigh, d.offsetLow) : undefined)
  if (fragInfo) {
    p.tally.allocatedClusters++
    p.tally.compressedClusters++
    p.tally.fragmentedClusters++
  }
}

/**
 * Counts and checks an entry the format codec calls Invalid (or a compressed
 * one with COPIED or a subcluster bitmap, which it decodes), from its raw
 * words, as QEMU's check_refcounts_l2 treats every entry. Returns true when
 * the entry is an unaligned preallocated zero cluster that `fix.errors`
 * asks to repair (its corruption already counted).
 */
function invalidEntry(p: Pass, table: Uint8Array, i: number, scan: L2Scan, fragInfo: boolean, fix: Fix): boolean {
  const img = p.img
  const tally = p.tally
  const raw = l2Raw(img, table, i)
  const { hi, lo, zeroMask, allocatedMask } = raw
  const type = rawClusterType(raw, img.extendedL2, img.hasDataFile)
  if (type !== ClusterType.Compressed && ((hi & EntryBits.L2ReservedHigh) !== 0 || (lo & EntryBits.L2ReservedLow) !== 0)) {
    p.log(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`)
    tally.corruptions++
  }
  switch (type) {
    case ClusterType.Compressed: {
      let h = hi
      if ((h & EntryBits.Copied) !== 0) {
        const d = rawCompressedDescriptor(hi, lo, img.clusterBits)
        p.log(`ERROR: coffset=0x${hex64(d.offsetHigh, d.offsetLow)}: copied flag must never be set for compressed clusters`)
        h = (h & ~EntryBits.Copied) >>> 0
        tally.corruptions++
      }
      if (img.hasDataFile || (zeroMask === 0 && allocatedMask === 0)) {
        countCompressed(p, i, h, lo, fragInfo)
      } else {
        p.log(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(h, lo)}`)
        tally.corruptions++
      }
      break
    }
    case ClusterType.ZeroAlloc:
    case ClusterType.Normal: {
      const offsetText = hex64(hi & EntryBits.OffsetHigh, lo & EntryBits.OffsetLow)
      if ((zeroMask & allocatedMask) !== 0) {
        tally.corruptions++
        p.log(`ERROR offset=${offsetText}: Allocated cluster has corrupted subcluster allocation bitmap`)
      }
      if (rawOffsetUnaligned(lo, img.clusterSize)) {
        tally.corruptions++
        const containsData = img.extendedL2 ? allocatedMask !== 0 : (lo & EntryBits.Zero) === 0
        if (!containsData) {
          p.log(`${fix.errors ? "Repairing" : "ERROR"} offset=${offsetText}: Preallocated cluster is not properly aligned; L2 entry corrupted.`)
          if (fix.errors) {
            scan.next = i + 1
            return true
          }
        } else {
          p.log(`ERROR offset=${offsetText}: Data cluster is not properly aligned; L2 entry corrupted.`)
        }
      }
      countData(p, rawHostOffset(hi, lo), offsetHex(hi, lo), fragInfo, scan)
      break
    }
    case ClusterType.ZeroPlain:
      break
    case ClusterType.Unallocated:
      if (allocatedMask !== 0) {
        tally.corruptions++
        p.log("ERROR: Unallocated cluster has non-zero subcluster allocation map")
      }
      break
  }
  return false
}

/**
 * Counts the clusters of L2 entries from `scan.next` on and checks them
 * (the body of QEMU's check_refcounts_l2), in plain code: valid entries as
 * readL2Entry decodes them, Invalid ones from their raw words. Stops early
 * and returns the index of an unaligned preallocated entry that
 * `fix.errors` asks to repair (its corruption already counted); -1 at the end.
 */
function scanL2(p: Pass, table: Uint8Array, scan: L2Scan, fragInfo: boolean, fix: Fix): number {
  const img = p.img
  const n = img.l2Entries
  const step = img.l2EntryBytes
  for (let i = scan.next; i < n; i++) {
    if (!img.extendedL2 && zeroWord(table, i * step)) continue
    const e = l2Entry(img, table, i)
    switch (e._tag) {
      case "Unallocated":
        continue
      case "Compressed": {
        const raw = l2Raw(img, table, i)
        // COPIED or a subcluster bitmap: damage the codec lets through, as QEMU's I/O does; check reports it.
        if ((raw.hi & EntryBits.Copied) !== 0 || raw.zeroMask !== 0 || raw.allocatedMask !== 0) {
          if (invalidEntry(p, table, i, scan, fragInfo, fix)) return i
        } else {
          countCompressed(p, i, raw.hi, raw.lo, fragInfo)
        }
        continue
      }
      case "Invalid":
        if (invalidEntry(p, table, i, scan, fragInfo, fix)) return i
        continue
      default: {
        const offset = allocatedOffset(e, img.hasDataFile)
        if (offset >= 0) countData(p, offset, undefined, fragInfo, scan)
        else if (e._tag === "Subclusters" && e.allocatedMask !== 0) {
          // COPIED with offset 0 and no data file: unallocated to QEMU, with allocation bits.
          p.tally.corruptions++
          p.log("ERROR: Unallocated cluster has non-zero subcluster allocation map")
        }
      }
    }
  }
  scan.next = n
  return -1
}

/**
 * Counts the clusters one L2 table references and checks its entries
 * (QEMU's check_refcounts_l2). `fragInfo` updates the allocation figures
 * (active L1 only).
 */
function checkL2(
  p: Pass,
  reader: L2Reader,
  l1Index: number,
  l2Offset: number,
  fragInfo: boolean,
  fix: Fix,
  active: boolean
): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    if (l2Offset >= p.img.fileSize) return
    const table = yield* reader.read(l1Index, l2Offset)
    const scan: L2Scan = { next: 0, nextContiguous: 0 }
    let first = -1
    let last = -1
    for (;;) {
      const stop = scanL2(p, table, scan, fragInfo, fix)
      if (stop < 0) break
      // Inactive L2 tables are not guarded by QEMU's default overlap check. Every entry of the
      // table lies in the same cluster, so the first repair decides for all (QEMU stops there).
      if (first < 0 && p.metadata.find(l2Offset + stop * p.img.l2EntryBytes, p.img.l2EntryBytes, active ? OL_ACTIVE_L2 : []) !== undefined) {
        p.log("ERROR: Overlap check failed")
        p.tally.checkErrors++
        return yield* abort(EIO)
      }
      zeroEntry(p, table, stop)
      if (first < 0) first = stop
      last = stop
    }
    // QEMU writes each repaired entry synchronously; one write of the changed span (then a flush) leaves the same bytes.
    if (first >= 0) {
      const size = p.img.l2EntryBytes
      yield* p.io.write(l2Offset + first * size, table.slice(first * size, (last + 1) * size))
      yield* p.io.flush()
    }
  })
}

/**
 * Counts an L1 table, its L2 tables and everything they reference (QEMU's
 * check_refcounts_l1). `table` is the already loaded active L1.
 */
function checkL1(
  p: Pass,
  l1Offset: number,
  l1Size: number,
  fragInfo: boolean,
  fix: Fix,
  active: boolean,
  l1OffsetHex?: string
): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    if (l1Size === 0) return
    const img = p.img
    countRegion(p, l1Offset, l1Size * 8, l1OffsetHex)
    const table = active ? img.activeL1 : yield* readBounded(p.io, img.fileSize, l1Offset, l1Size * 8)
    const n = Math.min(l1Size, Math.floor(table.length / 8))
    const reader = new L2Reader(p, table, n)
    for (let i = 0; i < n; i++) {
      const e = l1Entry(table, i)
      const { hi, lo } = e
      if (hi === 0 && lo === 0) continue
      if (e.reservedBitsSet) {
        p.log(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`)
        p.tally.corruptions++
      }
      countRegion(p, e.l2Offset, img.clusterSize, offsetHex(hi, lo))
      if (rawOffsetUnaligned(lo, img.clusterSize)) {
        p.log(`ERROR l2_offset=${hex64(hi & EntryBits.OffsetHigh, lo & EntryBits.OffsetLow)}: Table is not cluster aligned; L1 entry corrupted`)
        p.tally.corruptions++
      }
      yield* checkL2(p, reader, i, e.l2Offset, fragInfo, fix, active)
    }
  })
}

/**
 * Builds the expected refcount of every host cluster from everything that
 * references clusters (QEMU's calculate_refcounts): header, active and
 * snapshot L1/L2 tables and data, snapshot table, refcount table and
 * blocks, the LUKS header area and persistent bitmaps.
 */
export function calculateRefcounts(p: Pass, fix: Fix): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const img = p.img
    countRegion(p, 0, img.clusterSize)
    yield* checkL1(p, img.l1TableOffset, img.l1Size, true, fix, true)
    if (img.hasDataFile && img.snapshots.length > 0) {
      p.log(`ERROR ${img.snapshots.length} snapshots in image with data file`)
      p.tally.corruptions++
    }
    for (const sn of img.snapshots) {
      if (!sn.l1OffsetAligned) {
        p.log(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${altHex(sn.l1OffsetHex)}: L1 table is not cluster aligned; snapshot table entry corrupted`
        )
        p.tally.corruptions++
        continue
      }
      if (sn.l1Size > 4194304) {
        p.log(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=${altHex(sn.l1Size.toString(16))}: L1 table is too large; snapshot table entry corrupted`)
        p.tally.corruptions++
        continue
      }
      yield* checkL1(p, sn.l1Offset, sn.l1Size, false, fix, false, sn.l1OffsetHex)
    }
    countRegion(p, img.snapshotsOffset, img.snapshotsSize)
    countRegion(p, img.reftableOffset, img.reftableEntries * 8)
    if (img.crypto !== undefined && img.crypto.length !== 0) countRegion(p, img.crypto.offset, img.crypto.length)
    yield* checkBitmapReferences(p)
    yield* checkRefblocks(p, fix)
  })
}
