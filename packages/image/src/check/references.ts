import { Effect } from "effect"
import type { ImageError } from "../errors.js"
import { checkBitmapReferences } from "./bitmaps.js"
import { type CheckAborted, EFBIG, EINVAL, EIO, abort } from "./io.js"
import type { Fix, Pass } from "./pass.js"
import { TWO_32, altHex, be32, hex64, hexNum } from "./bytes.js"
import { readBounded } from "./state.js"

/** Largest IMRT we build (2 bytes per cluster): 2^27 clusters, 8 TiB of 64 KiB clusters. */
export const MAX_IMRT_CLUSTERS = 2 ** 27

/** QEMU's INT64_MAX, as the nearest double. */
const INT64_MAX = 2 ** 63

/**
 * Counts one reference to every cluster that `[offset, offset + size)`
 * touches (QEMU's qcow2_inc_refcounts_imrt). A region reaching a cluster or
 * more past the end of the file is a corruption and is not counted; a count
 * already at the refcount maximum is an overflow corruption.
 * `offsetHex` gives the exact offset for messages when it may exceed 2^53.
 */
export function countRegion(p: Pass, offset: number, size: number, offsetHex?: string): void {
  if (size <= 0) return
  const cs = p.img.clusterSize
  if (size === cs && offset % cs === 0 && offset < p.img.fileSize) {
    // one whole cluster inside the file: the common case of data and tables
    if (!p.imrt.increment(offset / cs)) overflow(p, offset)
    return
  }
  if (offset + size - p.img.fileSize >= cs) {
    p.log(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offsetHex ?? hexNum(offset)} size 0x${hexNum(size)}`
    )
    p.tally.corruptions++
    return
  }
  const first = Math.floor(offset / cs)
  const last = Math.floor((offset + size - 1) / cs)
  for (let k = first; k <= last; k++) {
    if (!p.imrt.increment(k)) overflow(p, k * cs)
  }
}

function overflow(p: Pass, clusterOffset: number): void {
  p.log(`ERROR: overflow cluster offset=0x${hexNum(clusterOffset)}`)
  p.log(
    "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing"
  )
  p.tally.corruptions++
}

/** The exact hex text of hi:lo when `value` (its double) is not exact, else undefined. */
export const exactHex = (value: number, hi: number, lo: number): string | undefined =>
  value > Number.MAX_SAFE_INTEGER ? hex64(hi, lo >>> 0) : undefined

/** L2 entry types as QEMU's qcow2_get_cluster_type classifies them. */
export const ClusterType = {
  Unallocated: 0,
  ZeroPlain: 1,
  ZeroAlloc: 2,
  Normal: 3,
  Compressed: 4
} as const
export type ClusterType = (typeof ClusterType)[keyof typeof ClusterType]

const COPIED = 0x80000000
const COMPRESSED = 0x40000000

/** Classifies the first word hi:lo of an L2 entry. */
export function clusterType(hi: number, lo: number, extendedL2: boolean, hasDataFile: boolean): ClusterType {
  if ((hi & COMPRESSED) !== 0) return ClusterType.Compressed
  const hasOffset = (hi & 0x00ffffff) !== 0 || (lo & 0xfffffe00) !== 0
  if ((lo & 1) !== 0 && !extendedL2) return hasOffset ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain
  if (!hasOffset) return hasDataFile && (hi & COPIED) !== 0 ? ClusterType.Normal : ClusterType.Unallocated
  return ClusterType.Normal
}

/** Host offset (bits 9-55) of a standard L2 or L1 entry; inexact above 2^53, which is past any file. */
export const entryOffset = (hi: number, lo: number): number => (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0)

const OL_ACTIVE_L2 = ["active L2 table"] as const

/**
 * Turns an L2 entry whose preallocated (zero) cluster is unaligned into a
 * plain zero entry (QEMU's fix_l2_entry_by_zero). The caller has counted the
 * corruption; success moves it to the fixed ones. A metadata overlap aborts.
 */
function fixEntryByZero(
  p: Pass,
  l2Offset: number,
  table: Uint8Array,
  index: number,
  active: boolean
): Effect.Effect<void, ImageError | CheckAborted> {
  return Effect.gen(function* () {
    const size = p.img.l2EntryBytes
    const o = index * size
    const entry = table.subarray(o, o + size)
    if (p.img.extendedL2) {
      const zero = (be32(table, o + 8) | be32(table, o + 12)) >>> 0
      entry.fill(0)
      new DataView(entry.buffer, entry.byteOffset, entry.byteLength).setUint32(8, zero)
    } else {
      entry.fill(0)
      entry[7] = 1
    }
    const where = l2Offset + o
    // Inactive L2 tables are not guarded by QEMU's default overlap check.
    if (p.metadata.find(where, size, active ? OL_ACTIVE_L2 : []) !== undefined) {
      p.log("ERROR: Overlap check failed")
      p.tally.checkErrors++
      return yield* abort(EIO)
    }
    yield* p.io.write(where, entry.slice())
    yield* p.io.flush()
    p.tally.corruptions--
    p.tally.corruptionsFixed++
  })
}

/** Bytes of L2 tables fetched ahead at once. */
const L2_BATCH_BYTES = 8 << 20
/** Concurrent reads while fetching ahead. */
const L2_READ_CONCURRENCY = 8

/**
 * Reads the L2 tables of one L1 table in L1 order, fetching the next tables
 * (up to 8 MiB, at most 64) with a few concurrent reads, since a check is
 * bound by the latency of many small reads when clusters are small.
 */
export class L2Reader {
  private batch = new Map<number, Uint8Array>()

  constructor(
    private readonly p: Pass,
    private readonly l1: Uint8Array,
    private readonly l1Entries: number
  ) {}

  /** The table at `offset`, which is entry `index` of the L1 table. */
  read(index: number, offset: number): Effect.Effect<Uint8Array, ImageError> {
    const hit = this.batch.get(offset)
    if (hit !== undefined) return Effect.succeed(hit)
    const cs = this.p.img.clusterSize
    const limit = Math.max(1, Math.min(64, Math.floor(L2_BATCH_BYTES / cs)))
    const offsets: Array<number> = [offset]
    for (let j = index + 1; j < this.l1Entries && offsets.length < limit; j++) {
      const o = entryOffset(be32(this.l1, j * 8), be32(this.l1, j * 8 + 4))
      if (o !== 0 && o < this.p.img.fileSize && !offsets.includes(o)) offsets.push(o)
    }
    if (offsets.length === 1) return this.p.io.read(offset, cs)
    return Effect.forEach(offsets, (o) => this.p.io.read(o, cs), { concurrency: L2_READ_CONCURRENCY }).pipe(
      Effect.map((tables) => {
        this.batch = new Map(offsets.map((o, i) => [o, tables[i]!]))
        return tables[0]!
      })
    )
  }
}

/** Where a scan of an L2 table stands: the next entry and the fragmentation cursor. */
interface L2Scan {
  next: number
  nextContiguous: number
}

/**
 * Counts the clusters of L2 entries from `scan.next` on and checks them
 * (the body of QEMU's check_refcounts_l2), in plain code. Stops early and
 * returns the index of an unaligned preallocated entry that `fix.errors`
 * asks to repair (its corruption already counted); -1 at the end.
 */
function scanL2(p: Pass, table: Uint8Array, scan: L2Scan, fragInfo: boolean, fix: Fix): number {
  const img = p.img
  const cs = img.clusterSize
  const tally = p.tally
  const ext = img.extendedL2
  const step = img.l2EntryBytes
  const n = img.l2Entries
  for (let i = scan.next; i < n; i++) {
    const o = i * step
    const hi = be32(table, o)
    const lo = be32(table, o + 4)
    const zeroMask = ext ? be32(table, o + 8) : 0
    const allocMask = ext ? be32(table, o + 12) : 0
    if (hi === 0 && lo === 0 && zeroMask === 0 && allocMask === 0) continue
    const type = clusterType(hi, lo, ext, img.hasDataFile)
    if (type !== ClusterType.Compressed && ((hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0)) {
      p.log(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`)
      tally.corruptions++
    }
    switch (type) {
      case ClusterType.Compressed: {
        let h = hi
        const shift = 70 - img.clusterBits
        const offHi = h & ((1 << (shift - 32)) - 1)
        if ((h & COPIED) !== 0) {
          p.log(`ERROR: coffset=0x${hex64(offHi, lo)}: copied flag must never be set for compressed clusters`)
          h = (h & ~COPIED) >>> 0
          tally.corruptions++
        }
        if (img.hasDataFile) {
          p.log(`ERROR compressed cluster ${i} with data file, entry=0x${hex64(h, lo)}`)
          tally.corruptions++
          break
        }
        if (zeroMask !== 0 || allocMask !== 0) {
          p.log(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(h, lo)}`)
          tally.corruptions++
          break
        }
        const sectors = ((h >>> (shift - 32)) & ((1 << (img.clusterBits - 8)) - 1)) + 1
        const coffset = offHi * TWO_32 + lo
        countRegion(p, coffset, sectors * 512 - (lo & 511), exactHex(coffset, offHi, lo))
        if (fragInfo) {
          tally.allocatedClusters++
          tally.compressedClusters++
          tally.fragmentedClusters++
        }
        break
      }
      case ClusterType.ZeroAlloc:
      case ClusterType.Normal: {
        const offset = entryOffset(hi, lo)
        if ((zeroMask & allocMask) !== 0) {
          tally.corruptions++
          p.log(`ERROR offset=${hex64(hi & 0x00ffffff, lo & 0xfffffe00)}: Allocated cluster has corrupted subcluster allocation bitmap`)
        }
        if ((lo & (cs - 1) & 0xfffffe00) !== 0) {
          tally.corruptions++
          const containsData = ext ? allocMask !== 0 : (lo & 1) === 0
          const offsetHex = hex64(hi & 0x00ffffff, lo & 0xfffffe00)
          if (!containsData) {
            p.log(`${fix.errors ? "Repairing" : "ERROR"} offset=${offsetHex}: Preallocated cluster is not properly aligned; L2 entry corrupted.`)
            if (fix.errors) {
              scan.next = i + 1
              return i
            }
          } else {
            p.log(`ERROR offset=${offsetHex}: Data cluster is not properly aligned; L2 entry corrupted.`)
          }
        }
        if (fragInfo) {
          tally.allocatedClusters++
          if (scan.nextContiguous !== 0 && offset !== scan.nextContiguous) tally.fragmentedClusters++
          scan.nextContiguous = offset + cs
        }
        if (!img.hasDataFile) countRegion(p, offset, cs, exactHex(offset, hi & 0x00ffffff, lo & 0xfffffe00))
        break
      }
      case ClusterType.ZeroPlain:
        break
      case ClusterType.Unallocated:
        if (allocMask !== 0) {
          tally.corruptions++
          p.log("ERROR: Unallocated cluster has non-zero subcluster allocation map")
        }
        break
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
): Effect.Effect<void, ImageError | CheckAborted> {
  return Effect.gen(function* () {
    if (l2Offset >= p.img.fileSize) return
    const table = yield* reader.read(l1Index, l2Offset)
    const scan: L2Scan = { next: 0, nextContiguous: 0 }
    for (;;) {
      const stop = scanL2(p, table, scan, fragInfo, fix)
      if (stop < 0) return
      yield* fixEntryByZero(p, l2Offset, table, stop, active)
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
  offsetHex?: string
): Effect.Effect<void, ImageError | CheckAborted> {
  return Effect.gen(function* () {
    if (l1Size === 0) return
    const img = p.img
    countRegion(p, l1Offset, l1Size * 8, offsetHex)
    const table = active ? img.activeL1 : yield* readBounded(p.io, img.fileSize, l1Offset, l1Size * 8)
    const n = Math.min(l1Size, Math.floor(table.length / 8))
    const reader = new L2Reader(p, table, n)
    for (let i = 0; i < n; i++) {
      const hi = be32(table, i * 8)
      const lo = be32(table, i * 8 + 4)
      if (hi === 0 && lo === 0) continue
      if ((hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0) {
        p.log(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`)
        p.tally.corruptions++
      }
      const l2Offset = entryOffset(hi, lo)
      countRegion(p, l2Offset, img.clusterSize, exactHex(l2Offset, hi & 0x00ffffff, lo & 0xfffffe00))
      if ((lo & (img.clusterSize - 1) & 0xfffffe00) !== 0) {
        p.log(`ERROR l2_offset=${hex64(hi & 0x00ffffff, (lo & 0xfffffe00) >>> 0)}: Table is not cluster aligned; L1 entry corrupted`)
        p.tally.corruptions++
      }
      yield* checkL2(p, reader, i, l2Offset, fragInfo, fix, active)
    }
  })
}

/**
 * Checks the refcount table entries and counts the refcount blocks (QEMU's
 * check_refblocks). With `fix.errors`, a block past the end of the file is
 * made part of it by growing the file, as QEMU does.
 */
function checkRefblocks(p: Pass, fix: Fix): Effect.Effect<void, ImageError> {
  return Effect.gen(function* () {
    const img = p.img
    const cs = img.clusterSize
    const n = Math.min(img.reftableEntries, Math.floor(img.reftable.length / 8))
    for (let i = 0; i < n; i++) {
      const hi = be32(img.reftable, i * 8)
      const lo = be32(img.reftable, i * 8 + 4)
      if (hi === 0 && lo === 0) continue
      if ((lo & 0x1ff) !== 0) {
        p.log(`ERROR refcount table entry ${i} has reserved bits set`)
        p.tally.corruptions++
        p.rebuild = true
        continue
      }
      if ((lo & (cs - 1)) !== 0) {
        p.log(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`)
        p.tally.corruptions++
        p.rebuild = true
        continue
      }
      const offset = hi * TWO_32 + lo
      const cluster = Math.floor(offset / cs)
      if (cluster >= p.imrt.size) {
        p.tally.corruptions++
        p.log(`${fix.errors ? "Repairing" : "ERROR"} refcount block ${i} is outside image`)
        if (fix.errors) {
          const failure = yield* growFileFor(p, offset)
          if (failure === undefined) {
            p.tally.corruptions--
            p.tally.corruptionsFixed++
            countRegion(p, offset, cs)
            continue
          }
          p.rebuild = true
          p.log(`ERROR could not resize image: ${failure}`)
        }
        continue
      }
      if (offset !== 0) {
        countRegion(p, offset, cs)
        const count = p.imrt.get(cluster)
        if (count !== 1) {
          p.log(`ERROR refcount block ${i} refcount=${count}`)
          p.tally.corruptions++
          p.rebuild = true
        }
      }
    }
  })
}

/** Grows the file to end with the cluster at `offset`; returns the strerror text on failure. */
function growFileFor(p: Pass, offset: number): Effect.Effect<string | undefined, ImageError> {
  return Effect.gen(function* () {
    const cs = p.img.clusterSize
    if (offset > INT64_MAX - cs) return EINVAL
    const target = offset + cs
    if (!Number.isSafeInteger(target) || target / cs > MAX_IMRT_CLUSTERS) return EFBIG
    const resized = yield* Effect.result(p.io.resize(target))
    if (resized._tag === "Failure") return resized.failure.message
    const size = yield* p.io.size()
    p.img.fileSize = size
    p.imrt.grow(Math.ceil(size / cs))
    if (Math.floor(offset / cs) >= p.imrt.size) return EINVAL
    return undefined
  })
}

/**
 * Builds the expected refcount of every host cluster from everything that
 * references clusters (QEMU's calculate_refcounts): header, active and
 * snapshot L1/L2 tables and data, snapshot table, refcount table and
 * blocks, the LUKS header area and persistent bitmaps.
 */
export function calculateRefcounts(p: Pass, fix: Fix): Effect.Effect<void, ImageError | CheckAborted> {
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
        p.log(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=${altHex(hexNum(sn.l1Size))}: L1 table is too large; snapshot table entry corrupted`)
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
