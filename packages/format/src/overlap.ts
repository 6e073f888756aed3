/**
 * Where an image's metadata lives on the host, and which structure a host
 * range would overwrite: QEMU's metadata overlap check
 * (qcow2_check_metadata_overlap, default mode "cached": every structure but
 * inactive L2 tables, which overlap-check.inactive-l2 adds). A writer asks before it writes data or a table; a
 * hit means the image's metadata contradicts itself, and the writer marks
 * the image corrupt instead of writing ("Preventing invalid write on
 * metadata (overlaps with active L2 table)").
 *
 * Pure bookkeeping, no I/O: the engine keeps one index current as tables
 * move, `qcow2 check` builds one from what it reads.
 */

import { Limits } from "./constants.js"

/** Metadata structures, named as QEMU names them in its overlap messages. */
export type MetadataKind =
  | "qcow2_header"
  | "active L1 table"
  | "active L2 table"
  | "refcount table"
  | "refcount block"
  | "snapshot table"
  | "inactive L1 table"
  | "inactive L2 table"
  | "bitmap directory"

/** A host byte range [offset, offset + length). */
export interface HostRange {
  readonly offset: number
  readonly length: number
}

/** Structures made of whole clusters that come and go one at a time. */
export type ClusterKind = "active L2 table" | "refcount block" | "inactive L2 table"

/** A table a header or snapshot entry describes that QEMU refuses to use, with the errno it fails with. */
export interface TableProblem {
  readonly errno: "EINVAL" | "EFBIG"
  readonly message: string
}

/**
 * QEMU's check of a snapshot's L1 table before it reads it
 * (qcow2_validate_table, "Snapshot L1 table"): at most 32 MiB of entries
 * (EFBIG), a cluster-aligned offset whose end fits a signed 64-bit
 * offset (EINVAL; here 2^53).
 */
export const snapshotL1Problem = (offset: number, entries: number, clusterSize: number): TableProblem | undefined => {
  if (entries > Limits.maxL1Bytes / 8) return { errno: "EFBIG", message: "Snapshot L1 table too large" }
  if (offset % clusterSize !== 0 || offset + entries * 8 > Number.MAX_SAFE_INTEGER) return { errno: "EINVAL", message: "Snapshot L1 table offset invalid" }
  return undefined
}
/** Structures that are one contiguous range each (or a list of them: inactive L1 tables). */
export type RangeKind = Exclude<MetadataKind, ClusterKind | "qcow2_header">

/** Check order, as QEMU reports the first structure hit. */
const ORDER: ReadonlyArray<MetadataKind> = [
  "qcow2_header",
  "active L1 table",
  "refcount table",
  "snapshot table",
  "inactive L1 table",
  "active L2 table",
  "refcount block",
  "inactive L2 table",
  "bitmap directory"
]

/** Where an image's metadata lives (header, L1 and refcount tables, L2 tables, refcount blocks, snapshot table, bitmaps), to refuse a write that would land on it (QEMU's qcow2_check_metadata_overlap). */
export class OverlapIndex {
  private readonly clusterSize: number
  private readonly ranges = new Map<RangeKind, ReadonlyArray<HostRange>>()
  /** Cluster indices of L2 tables (the snapshots' only while inactive L2 tables are checked) and refcount blocks. */
  private readonly clusters: Record<ClusterKind, Set<number>> = { "active L2 table": new Set(), "refcount block": new Set(), "inactive L2 table": new Set() }
  /** How many of the cluster kinds index each host cluster (a cluster may be indexed under two), for `touchesAny`. */
  private readonly indexedClusters = new Map<number, number>()
  /** Every range (and the header's cluster) in cluster units, merged into disjoint [start, end) runs sorted by start, for `touchesAny`. */
  private runStarts: Array<number> = [0]
  private runEnds: Array<number> = [1]
  private refusal: TableProblem | undefined
  /** The snapshots' L2 tables are indexed (always, unless inactive L2 tables are checked and their L1 tables have not been read since they changed). */
  private inactiveL2Indexed = true
  /** Bumped by every change; see `version`. */
  private changes = 0

  /**
   * `checksInactiveL2`: QEMU's overlap-check.inactive-l2 (or
   * overlap-check=all). Its check reads every snapshot's L1 table, so a
   * table that fails validation fails every write (`inactiveL2Refusal`),
   * and the L2 tables the snapshots' L1 tables point to are indexed
   * (`setInactiveL2Tables`, once the engine has read them).
   */
  constructor(
    clusterSize: number,
    readonly checksInactiveL2 = false
  ) {
    this.clusterSize = clusterSize
  }

  /**
   * The snapshots' L1 tables (`entries` 8-byte entries at `offset`): the
   * "inactive L1 table" ranges and, when inactive L2 tables are checked,
   * the first table that fails QEMU's qcow2_validate_table.
   */
  setInactiveL1Tables(tables: ReadonlyArray<{ readonly offset: number; readonly entries: number }>): void {
    this.changes++
    this.setRanges(
      "inactive L1 table",
      tables.map((t) => ({ offset: t.offset, length: t.entries * 8 }))
    )
    this.refusal = undefined
    if (!this.checksInactiveL2) return
    this.clearClusters("inactive L2 table")
    this.inactiveL2Indexed = tables.length === 0
    for (const t of tables) {
      this.refusal = snapshotL1Problem(t.offset, t.entries, this.clusterSize)
      if (this.refusal !== undefined) return
    }
  }

  /**
   * Changes with every change to the index: a `find` answer remembered
   * together with it stays true while it does not change (callers that
   * check the same table on every request).
   */
  get version(): number {
    return this.changes
  }

  /** The image's cluster size in bytes. */
  get clusterBytes(): number {
    return this.clusterSize
  }

  /** Whether the snapshots' L2 tables are indexed; false while their L1 tables, changed, still have to be read. */
  get inactiveL2Ready(): boolean {
    return this.inactiveL2Indexed
  }

  /** The L2 tables the snapshots' L1 tables point to (host offsets, 0 = none), read by the engine after `setInactiveL1Tables`. */
  setInactiveL2Tables(offsets: Iterable<number>): void {
    this.changes++
    this.clearClusters("inactive L2 table")
    for (const offset of offsets) this.addCluster("inactive L2 table", offset)
    this.inactiveL2Indexed = true
  }

  /** Why every write fails while inactive L2 tables are checked; undefined when it may go on to `find`. */
  get inactiveL2Refusal(): TableProblem | undefined {
    return this.refusal
  }

  /** Replaces the ranges of one kind (the active L1 table moved, the snapshot table was rewritten …). */
  setRanges(kind: RangeKind, ranges: ReadonlyArray<HostRange>): void {
    this.changes++
    this.ranges.set(
      kind,
      ranges.filter((r) => r.length > 0)
    )
    const runs: Array<[number, number]> = [[0, 1]]
    const cs = this.clusterSize
    for (const list of this.ranges.values()) for (const r of list) runs.push([Math.floor(r.offset / cs), Math.ceil((r.offset + r.length) / cs)])
    runs.sort((a, b) => a[0] - b[0])
    this.runStarts = []
    this.runEnds = []
    for (const [start, end] of runs) {
      const last = this.runEnds.length - 1
      if (last >= 0 && start <= this.runEnds[last]) this.runEnds[last] = Math.max(this.runEnds[last], end)
      else {
        this.runStarts.push(start)
        this.runEnds.push(end)
      }
    }
  }

  /** Records a table of `kind` in the cluster at `offset`. Offsets past 2^53 are unreachable by any write and skipped. */
  addCluster(kind: ClusterKind, offset: number): void {
    this.changes++
    if (!Number.isSafeInteger(offset) || offset <= 0) return
    const cluster = Math.floor(offset / this.clusterSize)
    const set = this.clusters[kind]
    if (set.has(cluster)) return
    set.add(cluster)
    this.indexedClusters.set(cluster, (this.indexedClusters.get(cluster) ?? 0) + 1)
  }

  /** Forgets the table of `kind` at `offset` (freed). */
  removeCluster(kind: ClusterKind, offset: number): void {
    this.changes++
    const cluster = Math.floor(offset / this.clusterSize)
    if (this.clusters[kind].delete(cluster)) this.unindex(cluster)
  }

  /** Forgets every table of `kind` (before re-reading them from disk). */
  clearClusters(kind: ClusterKind): void {
    this.changes++
    for (const cluster of this.clusters[kind]) this.unindex(cluster)
    this.clusters[kind].clear()
  }

  private unindex(cluster: number): void {
    const count = this.indexedClusters.get(cluster) ?? 0
    if (count <= 1) this.indexedClusters.delete(cluster)
    else this.indexedClusters.set(cluster, count - 1)
  }

  /**
   * Whether clusters [first, end) hold any metadata at all: `find`'s quick
   * answer for the usual write, which touches none (a lookup per cluster
   * and a binary search over the merged ranges, instead of a walk over
   * every kind).
   */
  private touchesAny(first: number, end: number): boolean {
    const indexed = this.indexedClusters
    if (indexed.size > 0) {
      if (end - first <= indexed.size) {
        for (let c = first; c < end; c++) if (indexed.has(c)) return true
      } else {
        for (const c of indexed.keys()) if (c >= first && c < end) return true
      }
    }
    // The last run starting before `end` is the only one that can reach `first`: the runs are disjoint and sorted.
    const starts = this.runStarts
    let low = 0
    let high = starts.length
    while (low < high) {
      const mid = (low + high) >>> 1
      if (starts[mid] < end) low = mid + 1
      else high = mid
    }
    return low > 0 && this.runEnds[low - 1] > first
  }

  /** Whether a table of `kind` lives in the cluster at `offset`. */
  hasCluster(kind: ClusterKind, offset: number): boolean {
    return this.clusters[kind].has(Math.floor(offset / this.clusterSize))
  }

  /**
   * The first structure (in QEMU's order, skipping `ignore`) that host
   * bytes [offset, offset + length) touch, at cluster granularity as QEMU
   * checks them; undefined when the range is free of metadata.
   */
  find(offset: number, length: number, ignore: ReadonlyArray<MetadataKind> = []): MetadataKind | undefined {
    if (length <= 0) return undefined
    const cs = this.clusterSize
    const first = Math.floor(offset / cs)
    const end = Math.ceil((offset + length) / cs)
    if (!this.touchesAny(first, end)) return undefined
    for (const kind of ORDER) {
      if (ignore.includes(kind)) continue
      if (kind === "qcow2_header") {
        if (first === 0) return kind
        continue
      }
      if (kind === "active L2 table" || kind === "refcount block" || kind === "inactive L2 table") {
        const set = this.clusters[kind]
        if (set.size === 0) continue
        if (end - first <= set.size) {
          for (let c = first; c < end; c++) if (set.has(c)) return kind
        } else {
          for (const c of set) if (c >= first && c < end) return kind
        }
        continue
      }
      for (const r of this.ranges.get(kind) ?? []) {
        if (first * cs < r.offset + r.length && r.offset < end * cs) return kind
      }
    }
    return undefined
  }
}
