import { TWO_32, be32 } from "./bytes.js"
import type { ImageInfo } from "./state.js"

/** Metadata kinds in the order QEMU's qcow2_check_metadata_overlap tests them, named as it names them. */
export type MetadataKind =
  | "qcow2_header"
  | "active L1 table"
  | "refcount table"
  | "snapshot table"
  | "inactive L1 table"
  | "active L2 table"
  | "refcount block"
  | "bitmap directory"

interface Range {
  readonly kind: MetadataKind
  readonly start: number
  readonly end: number
}

/**
 * Guards metadata writes of a repair the way QEMU's default overlap check
 * ("cached": everything but inactive L2 tables) does: a write into any other
 * metadata structure is refused. The per-cluster index of L2 tables and
 * refcount blocks is built on first use and rebuilt after `invalidate`.
 */
export class MetadataIndex {
  private l2Clusters: Set<number> | undefined
  private refblockClusters: Set<number> | undefined
  private ranges: Array<Range> | undefined

  constructor(private readonly img: ImageInfo) {}

  invalidate(): void {
    this.l2Clusters = undefined
    this.refblockClusters = undefined
    this.ranges = undefined
  }

  private build(): void {
    const img = this.img
    const cs = img.clusterSize
    const ranges: Array<Range> = []
    const add = (kind: MetadataKind, start: number, length: number) => {
      if (length > 0) ranges.push({ kind, start, end: start + length })
    }
    if (img.l1Size > 0) add("active L1 table", img.l1TableOffset, img.l1Size * 8)
    if (img.reftableEntries > 0) add("refcount table", img.reftableOffset, img.reftableEntries * 8)
    if (img.snapshotsSize > 0) add("snapshot table", img.snapshotsOffset, img.snapshotsSize)
    for (const s of img.snapshots) if (s.l1Size > 0) add("inactive L1 table", s.l1Offset, s.l1Size * 8)
    const mark = (set: Set<number>, offset: number) => {
      // past 2^53 no write can reach it (and cluster numbers there are not exact)
      if (offset > Number.MAX_SAFE_INTEGER) return
      const first = Math.floor(offset / cs)
      const last = Math.floor((offset + cs - 1) / cs)
      for (let c = first; c <= last; c++) set.add(c)
    }
    const l2 = new Set<number>()
    for (let i = 0; i * 8 < img.activeL1.length && i < img.l1Size; i++) {
      const off = (be32(img.activeL1, i * 8) & 0x00ffffff) * TWO_32 + ((be32(img.activeL1, i * 8 + 4) & 0xfffffe00) >>> 0)
      if (off !== 0) mark(l2, off)
    }
    const refblocks = new Set<number>()
    for (let i = 0; i * 8 < img.reftable.length && i < img.reftableEntries; i++) {
      const off = be32(img.reftable, i * 8) * TWO_32 + ((be32(img.reftable, i * 8 + 4) & 0xfffffe00) >>> 0)
      if (off !== 0) mark(refblocks, off)
    }
    this.l2Clusters = l2
    this.refblockClusters = refblocks
    this.ranges = ranges
  }

  /** The first metadata structure (not in `ignore`) that `[offset, offset + size)` touches, if any. */
  find(offset: number, size: number, ignore: ReadonlyArray<MetadataKind>): MetadataKind | undefined {
    if (size === 0) return undefined
    const img = this.img
    const cs = img.clusterSize
    if (!ignore.includes("qcow2_header") && offset < cs) return "qcow2_header"
    if (this.ranges === undefined) this.build()
    const first = Math.floor(offset / cs)
    const end = Math.ceil((offset + size) / cs)
    for (const r of this.ranges!) {
      if (!ignore.includes(r.kind) && first * cs < r.end && r.start < end * cs) return r.kind
    }
    const touches = (set: Set<number>) => {
      for (let c = first; c < end; c++) if (set.has(c)) return true
      return false
    }
    if (!ignore.includes("active L2 table") && touches(this.l2Clusters!)) return "active L2 table"
    if (!ignore.includes("refcount block") && touches(this.refblockClusters!)) return "refcount block"
    const dir = img.bitmaps
    if (dir !== undefined && !ignore.includes("bitmap directory") && dir.directorySize > 0) {
      if (first * cs < dir.directoryOffset + dir.directorySize && dir.directoryOffset < end * cs) return "bitmap directory"
    }
    return undefined
  }
}
