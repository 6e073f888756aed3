/**
 * Refcounts and cluster allocation (qcow2.txt "Host cluster management").
 * Longer than most modules on purpose: allocation, refcount block creation
 * and refcount table growth share one free-space state (free-cluster index, end of
 * allocated clusters, freed-but-not-durable clusters) and one set of
 * ordering rules; split apart, each piece would need the others' internals.
 */
import { Effect } from "effect"
import {
  Limits,
  hexAlt,
  maxRefcount,
  readRefcount,
  writeRefcount,
  writeRefcountTableEntry
} from "@qcow2/format"
import type { TableCache, TableCacheError } from "@qcow2/cache"
import type { OverlapIndex } from "@qcow2/format"
import { debugPoint, type BlockStorageShape, type StorageError } from "@qcow2/storage"
import { RefcountError } from "./errors.js"

/** Where the refcount table lives. */
export interface RefcountTableLocation {
  readonly offset: number
  readonly clusters: number
}

/**
 * The header fields that locate the refcount table. Moving the table
 * switches them (consistency rule 4: the header is written through, with
 * flush barriers around it).
 */
export interface RefcountTableHeader {
  /** Writes the new refcount table location into the header (`refcount_table_offset`, `refcount_table_clusters`), flushed around. */
  readonly moveRefcountTable: (location: RefcountTableLocation) => Effect.Effect<void, StorageError>
}

/** What `Refcounts` is built from: the open image's storage and geometry, its refcount table as read at open, and the caches it shares with the engine. */
export interface RefcountsOptions {
  readonly storage: BlockStorageShape
  readonly clusterBits: number
  readonly refcountOrder: number
  readonly table: RefcountTableLocation
  /** The whole refcount table as read from the image (refcount_table_clusters clusters). */
  readonly tableBytes: Uint8Array
  readonly blockCache: TableCache
  /**
   * The cache of the tables that reference clusters (the L2 cache): the
   * flush order between it and the refcount blocks is declared here, by the
   * allocator, so that no caller can forget it.
   */
  readonly mappingCache: TableCache
  /** Current size of the image file, to start allocation past its end when nothing is free. */
  readonly fileSize: number
  readonly header: RefcountTableHeader
  /** Lazy refcounts (the dirty bit is set): refcount blocks need not reach disk before the entries that use them. */
  readonly lazy: boolean
  /** The image's metadata overlap index; the allocator keeps the refcount table and blocks in it. */
  readonly overlaps: OverlapIndex
}

type Failure = RefcountError | TableCacheError

/** A refcount table entry no valid image has: the reason, reported when the entry is used. */
const INVALID_ENTRY = -1
/** Largest high half of a table entry whose offset stays below 2^53. */
const MAX_SAFE_HIGH = 0x1fffff

/**
 * The refcount table, its refcount blocks and cluster allocation
 * (spec: "Host cluster management"). Every method must be called with the
 * engine's metadata lock held; pure arithmetic stays outside Effect.
 *
 * Refcounts count references: 0 free, 1 owned by one user, >= 2 shared
 * (a write must copy first).
 *
 * Consistency rules 1 and 3 live here, declared when clusters are allocated
 * and freed:
 * - rule 1: `allocate` makes the mapping (L2) cache wait for the refcount
 *   blocks, and `persistAllocations` writes them before a reference that is
 *   written through (L1 entries, a new L1 table);
 * - rule 3: `free` makes the refcount blocks wait for the mapping cache;
 * - and in every mode, lazy refcounts included: a cluster freed here is not
 *   handed out again until the mapping tables that dropped it are durable
 *   (otherwise a crash could leave the old entry pointing at new data).
 */
export class Refcounts {
  readonly clusterBits: number
  readonly clusterSize: number
  readonly refcountOrder: number
  /** Entries per refcount block. */
  readonly blockEntries: number
  readonly maxRefcount: number
  private readonly storage: BlockStorageShape
  /** The refcount block cache. */
  readonly cache: TableCache
  private readonly mappingCache: TableCache
  private readonly header: RefcountTableHeader
  private readonly lazy: boolean
  private readonly overlaps: OverlapIndex
  private table: RefcountTableLocation
  private tableBytes: Uint8Array
  /** Refcount block offsets by block index (0 = none, INVALID_ENTRY = unusable), decoded once. */
  private blockOffsets: number[] = []
  /**
   * Where the search for free clusters starts (QEMU's free_cluster_index):
   * past each run found, back to any cluster whose refcount drops to 0.
   * Cluster 0 (the header) is searched too: on an image whose refcounts
   * do not count it, QEMU finds it free, and the overlap checks stop what
   * would be written there.
   */
  private freeClusterIndex = 0
  /** Next free byte for compressed data packing (0 = start a new cluster). */
  private freeByteOffset = 0
  /** One past the highest cluster index known to be in use or allocated. */
  private endCluster = 0
  /** Index of the last refcount table entry naming a block (-1 when none): past its range, nothing is counted. */
  private lastBlock = -1
  /**
   * Whether `endCluster` is known to bound every counted cluster. At open it
   * is only the file end, and a crash can leave clusters counted past it;
   * the first allocation looks once.
   */
  private tailKnown = false
  /** Clusters freed since the mapping tables were last made durable: not reusable yet. */
  private readonly freedPending = new Set<number>()
  /** Clusters left unreferenced by frees that pass discards on, until `takeDiscards`. */
  private readonly toDiscard: number[] = []

  constructor(options: RefcountsOptions) {
    this.clusterBits = options.clusterBits
    this.clusterSize = 2 ** options.clusterBits
    this.refcountOrder = options.refcountOrder
    this.blockEntries = 2 ** (options.clusterBits + 3 - options.refcountOrder)
    this.maxRefcount = maxRefcount(options.refcountOrder)
    this.storage = options.storage
    this.cache = options.blockCache
    this.mappingCache = options.mappingCache
    this.header = options.header
    this.lazy = options.lazy
    this.overlaps = options.overlaps
    this.table = options.table
    this.tableBytes = options.tableBytes
    this.adoptTable(options.table, options.tableBytes, options.fileSize)
  }

  /**
   * Starts over from a refcount table read from disk (after a repair
   * rewrote the refcount structures). The block cache must be empty.
   */
  reload(table: RefcountTableLocation, tableBytes: Uint8Array, fileSize: number): void {
    this.freeClusterIndex = 0
    this.freeByteOffset = 0
    this.endCluster = 0
    this.freedPending.clear()
    this.toDiscard.length = 0
    this.adoptTable(table, tableBytes, fileSize)
  }

  private adoptTable(table: RefcountTableLocation, tableBytes: Uint8Array, fileSize: number): void {
    this.table = table
    this.tableBytes = tableBytes
    this.overlaps.setRanges("refcount table", [{ offset: table.offset, length: table.clusters * this.clusterSize }])
    this.overlaps.clearClusters("refcount block")
    const used = usedEntries(tableBytes)
    this.blockOffsets = refcountTableOffsets(tableBytes, used)
    this.lastBlock = -1
    this.tailKnown = false
    for (let i = 0; i < used; i++) {
      const offset = this.blockOffsets[i]!
      if (offset === 0) continue
      this.lastBlock = i
      if (offset > 0) this.overlaps.addCluster("refcount block", offset)
    }
    this.endCluster = Math.max(this.endCluster, Math.ceil(fileSize / this.clusterSize))
  }

  /** Offsets of every refcount block (0 where none), by block index. */
  get refcountBlockOffsets(): ReadonlyArray<number> {
    return this.blockOffsets
  }

  /** One past the highest cluster index allocated so far (or the file end). */
  get endOfAllocatedClusters(): number {
    return this.endCluster
  }

  /**
   * The usable offset of refcount block `blockIndex`, 0 when none exists, or
   * the corruption QEMU reports for it (an unaligned or impossible offset).
   */
  private blockAt(blockIndex: number): number | RefcountError {
    const offset = blockIndex < this.blockOffsets.length ? this.blockOffsets[blockIndex] : 0
    if (offset === 0) return 0
    if (offset !== INVALID_ENTRY && offset % this.clusterSize === 0) return offset
    const exact = offset === INVALID_ENTRY ? this.entryOffset(blockIndex) : BigInt(offset)
    if (exact % BigInt(this.clusterSize) === 0n) {
      // Aligned past 2^53: QEMU reads there and fails (or finds nothing) without a corruption event.
      return new RefcountError({
        reason: "NoSpace",
        message: `Refblock offset 0x${exact.toString(16)} (reftable index: ${hexAlt(blockIndex)}) is past what this toolkit addresses (2^53)`,
        offset: this.table.offset + blockIndex * 8,
        errno: "EIO"
      })
    }
    return new RefcountError({
      reason: "Corrupt",
      message: `Refblock offset 0x${exact.toString(16)} unaligned (reftable index: ${hexAlt(blockIndex)})`,
      offset: this.table.offset + blockIndex * 8
    })
  }

  /** The refcount of host cluster `clusterIndex` (0 if no refcount block covers it). */
  get(clusterIndex: number): Effect.Effect<number, Failure> {
    const blockIndex = Math.floor(clusterIndex / this.blockEntries)
    const blockOffset = this.blockAt(blockIndex)
    if (typeof blockOffset !== "number") return Effect.fail(blockOffset)
    if (blockOffset === 0) return Effect.succeed(0)
    const index = clusterIndex - blockIndex * this.blockEntries
    const cached = this.cache.lookup(blockOffset)
    if (cached !== undefined) return this.decode(cached, index)
    return Effect.flatMap(this.cache.get(blockOffset), (block) => this.decode(block, index))
  }

  /**
   * How many host clusters of [0, `endCluster`) have a non-zero refcount,
   * counting no further than `limit`: the loop of QEMU's
   * qcow2_detect_metadata_preallocation, a refcount block at a time
   * instead of an Effect per cluster. Fails as `get` does on an unusable
   * refcount table entry.
   */
  countReferenced(endCluster: number, limit: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      let count = 0
      for (let first = 0; first < endCluster && count < limit; first += self.blockEntries) {
        const offset = self.blockAt(first / self.blockEntries)
        if (typeof offset !== "number") return yield* Effect.fail(offset)
        if (offset === 0) continue
        const block = self.cache.lookup(offset) ?? (yield* self.cache.get(offset))
        const entries = Math.min(self.blockEntries, endCluster - first)
        for (let i = 0; i < entries && count < limit; i++) if (!refcountIsZero(block, i, self.refcountOrder)) count++
      }
      return count
    })
  }

  /**
   * A 64-bit refcount past 2^53 reads as 2^53 - 1: readers only tell 0, 1
   * and "shared" apart (updates stay exact, see `update`).
   */
  private decode(block: Uint8Array, index: number): Effect.Effect<number, RefcountError> {
    if (this.refcountOrder === 6 && !fitsNumber(block, index)) return Effect.succeed(Number.MAX_SAFE_INTEGER)
    return Effect.succeed(readRefcount(block, index, this.refcountOrder))
  }

  /**
   * Drops refcount blocks that count nothing but (possibly) themselves,
   * after a shrink freed the clusters they described, in the order of
   * QEMU's qcow2_shrink_reftable: every block is looked at first, in table
   * order (one at an unaligned offset fails as QEMU's block cache does; one
   * past the end of the file reads as zeros); the table without the
   * dropped blocks is written and made durable in one piece; then each
   * dropped block's own cluster is freed in the block that covers it
   * (qcow2_discard_refcount_block), which must count it exactly once. The
   * dropped entries leave the table in memory even when freeing fails.
   */
  dropUnusedBlocks(): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      const fileSize = yield* self.storage.size()
      const table = self.tableBytes.slice()
      const dropped: number[] = []
      for (let b = 0; b <= self.lastBlock; b++) {
        const entry = self.entryOffset(b)
        if (entry === 0n) continue
        if (entry % BigInt(self.clusterSize) !== 0n) {
          return yield* new RefcountError({
            reason: "Corrupt",
            message: `Cannot get entry from refcount block cache: Offset 0x${entry.toString(16)} is unaligned`,
            offset: self.table.offset + b * 8
          })
        }
        const offset = self.blockOffsets[b]!
        let unused = true
        if (offset !== INVALID_ENTRY && offset < fileSize) {
          const block = self.cache.lookup(offset) ?? (yield* self.cache.get(offset))
          const own = offset / self.clusterSize - b * self.blockEntries
          for (let i = 0; i < self.blockEntries && unused; i++) unused = i === own || refcountIsZero(block, i, self.refcountOrder)
        }
        if (!unused) continue
        table.fill(0, b * 8, b * 8 + 8)
        dropped.push(b)
      }
      if (dropped.length === 0) return
      yield* self.storage.write(self.table.offset, table)
      yield* self.storage.flush()
      let failure: Failure | undefined
      for (const b of dropped) {
        if (failure === undefined) {
          const freed = yield* Effect.result(self.freeDroppedBlock(self.entryOffset(b)))
          if (freed._tag === "Failure") failure = freed.failure
        }
        const offset = self.blockOffsets[b]!
        if (offset !== INVALID_ENTRY) {
          self.cache.invalidate(offset)
          self.overlaps.removeCluster("refcount block", offset)
        }
        self.blockOffsets[b] = 0
      }
      self.tableBytes.set(table)
      while (self.lastBlock >= 0 && (self.blockOffsets[self.lastBlock] ?? 0) === 0) self.lastBlock--
      if (failure !== undefined) return yield* Effect.fail(failure)
    })
  }

  /** Refcount table entry `blockIndex`'s offset bits, exact past 2^53 (for QEMU's messages). */
  private entryOffset(blockIndex: number): bigint {
    const view = new DataView(this.tableBytes.buffer, this.tableBytes.byteOffset, this.tableBytes.byteLength)
    return view.getBigUint64(blockIndex * 8) & 0xfffffffffffffe00n
  }

  /**
   * Frees a dropped refcount block's own cluster in the block that covers
   * it (QEMU's qcow2_discard_refcount_block): a cluster no block covers, or
   * one not counted exactly once, is corruption.
   */
  private freeDroppedBlock(offset: bigint): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      const cluster = offset / BigInt(self.clusterSize)
      const coveringIndex = cluster / BigInt(self.blockEntries)
      const covering = coveringIndex < BigInt(self.blockOffsets.length) ? self.blockAt(Number(coveringIndex)) : 0
      if (typeof covering !== "number") return yield* covering
      if (covering === 0) {
        return yield* new RefcountError({ reason: "Corrupt", message: `Refblock at 0x${offset.toString(16)} is not covered by the refcount structures` })
      }
      const index = Number(cluster % BigInt(self.blockEntries))
      const block = self.cache.lookup(covering) ?? (yield* self.cache.get(covering))
      const refcount = readRefcount(block, index, self.refcountOrder)
      if (refcount !== 1) {
        return yield* new RefcountError({
          reason: "Corrupt",
          errno: "EINVAL",
          message: `Invalid refcount: refblock offset 0x${covering.toString(16)}, reftable index ${coveringIndex}, block offset 0x${offset.toString(16)}, refcount 0x${refcount.toString(16)}`
        })
      }
      writeRefcount(block, index, self.refcountOrder, 0)
      self.cache.markDirty(covering)
      self.freeClusterIndex = Math.min(self.freeClusterIndex, Number(cluster))
    })
  }

  /**
   * Runs of free clusters (refcount 0) below cluster `end`, as host byte
   * ranges: what a shrink hands back to the file system (QEMU discards
   * the clusters it frees).
   */
  freeRanges(end: number): Effect.Effect<ReadonlyArray<{ readonly offset: number; readonly length: number }>, Failure> {
    const self = this
    return Effect.gen(function* () {
      const ranges: Array<{ offset: number; length: number }> = []
      let runStart = -1
      const close = (at: number) => {
        if (runStart >= 0) ranges.push({ offset: runStart * self.clusterSize, length: (at - runStart) * self.clusterSize })
        runStart = -1
      }
      for (let b = 0; b * self.blockEntries < end; b++) {
        const offset = self.blockAt(b)
        if (typeof offset !== "number") return yield* offset
        const first = b * self.blockEntries
        const last = Math.min(end, first + self.blockEntries)
        if (offset === 0) {
          if (runStart < 0) runStart = Math.max(first, 1)
          continue
        }
        const block = self.cache.lookup(offset) ?? (yield* self.cache.get(offset))
        for (let c = Math.max(first, 1); c < last; c++) {
          if (refcountIsZero(block, c - first, self.refcountOrder)) {
            if (runStart < 0) runStart = c
          } else close(c)
        }
      }
      close(end)
      return ranges
    })
  }

  /**
   * Finds the last cluster with a non-zero refcount and returns the end of
   * it (a cluster count): what the image file may be truncated to after a
   * shrink (QEMU's qcow2_get_last_cluster). Everything from there on is
   * known to be free afterwards. Reads the refcount blocks, last first.
   */
  usedEnd(): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      for (let b = self.lastBlock; b >= 0; b--) {
        const offset = self.blockAt(b)
        if (typeof offset !== "number") return yield* offset
        if (offset === 0) continue
        const block = self.cache.lookup(offset) ?? (yield* self.cache.get(offset))
        for (let i = self.blockEntries - 1; i >= 0; i--) {
          if (refcountIsZero(block, i, self.refcountOrder)) continue
          self.endCluster = b * self.blockEntries + i + 1
          self.tailKnown = true
          return self.endCluster
        }
      }
      return 1
    })
  }

  /**
   * Fails as `update` would on clusters [first, last] before any of them
   * changes: a range is updated whole or not at all.
   */
  private checkUpdate(first: number, last: number, delta: number): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      for (let cluster = first; cluster <= last; cluster++) {
        const blockIndex = Math.floor(cluster / self.blockEntries)
        const blockOffset = self.blockAt(blockIndex)
        if (typeof blockOffset !== "number") return yield* blockOffset
        if (blockOffset === 0) {
          if (delta < 0) return yield* self.underflow(cluster, 0)
          continue
        }
        const block = self.cache.lookup(blockOffset) ?? (yield* self.cache.get(blockOffset))
        const index = cluster - blockIndex * self.blockEntries
        // A 64-bit refcount past 2^53 is checked exactly when it is updated.
        if (self.refcountOrder === 6 && !fitsNumber(block, index)) continue
        const current = readRefcount(block, index, self.refcountOrder)
        if (current + delta < 0) return yield* self.underflow(cluster, current)
        if (current + delta > self.maxRefcount) return yield* self.overflow(cluster)
      }
    })
  }

  /** A decrease below zero (QEMU: EINVAL from update_refcount, and no corruption event). */
  private underflow(cluster: number, current: number): Effect.Effect<never, RefcountError> {
    return Effect.fail(
      new RefcountError({ reason: "Underflow", message: `refcount of cluster ${cluster} would drop below zero (refcount=${current})`, offset: cluster * this.clusterSize })
    )
  }

  private overflow(cluster: number): Effect.Effect<never, RefcountError> {
    return Effect.fail(
      new RefcountError({
        reason: "Overflow",
        message: `refcount of cluster ${cluster} would exceed ${this.maxRefcount} (refcount_bits=${2 ** this.refcountOrder})`,
        offset: cluster * this.clusterSize
      })
    )
  }

  /**
   * Adds `delta` to the refcount of every cluster touched by the byte range
   * [offset, offset + length). An increase where no refcount block exists
   * makes the block first (allocations use `increaseFresh`, which searches
   * again then). A result above the maximum fails with `Overflow`, below
   * zero with `Underflow`, and then no refcount of the range has changed
   * (QEMU's update_refcount takes back the part it did).
   * `undoing`: taking back an increase just made, so the clusters were never
   * referenced and are free again at once. `freed` collects the clusters
   * left unreferenced.
   */
  private update(offset: number, length: number, delta: number, undoing = false, freed?: number[]): Effect.Effect<void, Failure> {
    if (length <= 0 || delta === 0) return Effect.void
    const self = this
    return Effect.gen(function* () {
      const first = Math.floor(offset / self.clusterSize)
      const last = Math.floor((offset + length - 1) / self.clusterSize)
      if (last > first) yield* self.checkUpdate(first, last, delta)
      let cluster = first
      while (cluster <= last) {
        const blockIndex = Math.floor(cluster / self.blockEntries)
        yield* debugPoint(self.storage, "refblock_alloc")
        const blockOffset = self.blockAt(blockIndex)
        if (typeof blockOffset !== "number") return yield* blockOffset
        if (blockOffset === 0) {
          if (delta < 0) return yield* self.underflow(cluster, 0)
          yield* self.makeBlock(cluster)
          continue
        }
        yield* debugPoint(self.storage, "refblock_load")
        const block = self.cache.lookup(blockOffset) ?? (yield* self.cache.get(blockOffset))
        const blockEnd = Math.min(last, (blockIndex + 1) * self.blockEntries - 1)
        for (; cluster <= blockEnd; cluster++) {
          const index = cluster - blockIndex * self.blockEntries
          if (self.refcountOrder === 6 && !fitsNumber(block, index)) {
            // A 64-bit refcount past 2^53: counted exactly in bigint, as QEMU does in uint64_t.
            const wide = updateWide(block, index, delta)
            if (wide !== undefined) {
              return yield* new RefcountError({ reason: wide, message: `refcount of cluster ${cluster} would leave the 64-bit range`, offset: cluster * self.clusterSize })
            }
            self.cache.markDirty(blockOffset)
            continue
          }
          const current = readRefcount(block, index, self.refcountOrder)
          const next = current + delta
          if (next < 0) return yield* self.underflow(cluster, current)
          if (next > self.maxRefcount) return yield* self.overflow(cluster)
          writeRefcount(block, index, self.refcountOrder, next)
          self.cache.markDirty(blockOffset)
          if (next === 0) {
            if (cluster < self.freeClusterIndex) self.freeClusterIndex = cluster
            if (!undoing) self.freedPending.add(cluster)
            freed?.push(cluster)
            // Compressed data is no longer packed into a freed cluster: it may be handed out whole next.
            if (self.freeByteOffset !== 0 && Math.floor(self.freeByteOffset / self.clusterSize) === cluster) self.freeByteOffset = 0
          } else if (cluster >= self.endCluster) {
            self.endCluster = cluster + 1
          }
        }
      }
    })
  }

  /**
   * Adds one reference to every cluster touched by [offset, offset + length)
   * (a snapshot sharing them, a compressed cluster packed after another).
   * Rule 1: the mapping tables that will point at them wait for the blocks.
   */
  reference(offset: number, length: number): Effect.Effect<void, Failure> {
    return Effect.andThen(this.update(offset, length, 1), this.orderAfterAllocation())
  }

  /**
   * Allocates `count` contiguous free clusters and sets their refcounts to 1
   * (QEMU's qcow2_alloc_clusters): the first free run from the free-cluster
   * index on, which then points past it. When a refcount block had to be
   * made for the run, the search starts again from the run (the new block
   * or refcount table may sit where the run was). Cluster 0 found free
   * (damaged refcounts) is refused: as QEMU's l2_allocate words it for
   * `what` ("Preventing invalid allocation of L2 table at offset 0"), else
   * as its overlap check stops a write over the header.
   */
  allocate(count: number, what?: string): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      yield* debugPoint(self.storage, "cluster_alloc")
      for (;;) {
        const start = yield* self.findFreeRun(count)
        if (yield* self.increaseFresh(start, count)) continue
        // Cluster 0 counted free: QEMU goes on and its overlap check stops the write there; nothing here writes over the header.
        if (start === 0) {
          if (what !== undefined) return yield* atOffsetZero(what)
          return yield* new RefcountError({ reason: "Corrupt", message: "Preventing invalid write on metadata (overlaps with qcow2_header)", offset: 0 })
        }
        yield* self.settleFreed(start, count)
        yield* self.orderAfterAllocation()
        return start * self.clusterSize
      }
    })
  }

  /**
   * Allocates up to `count` clusters starting exactly at cluster index
   * `first`: as many as are free there in a row, possibly none (QEMU's
   * qcow2_alloc_clusters_at, which a write uses to continue its host range
   * right after the part before it). Returns how many were allocated.
   */
  allocateAt(first: number, count: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      if (first < 1) return 0
      yield* self.learnTail()
      for (;;) {
        let free = 0
        while (free < count && (first + free + 1) * self.clusterSize <= Limits.maxHostOffset) {
          const c = first + free
          if (c < self.endCluster && (yield* self.get(c)) !== 0) break
          free++
        }
        if (free === 0) return 0
        if (yield* self.increaseFresh(first, free)) continue
        yield* self.settleFreed(first, free)
        yield* self.orderAfterAllocation()
        return free
      }
    })
  }

  /**
   * Allocates `size` bytes for a compressed cluster, packed at byte
   * granularity after the previous one (spec: compressed clusters may share
   * host clusters; QEMU's qcow2_alloc_bytes). Every host cluster the range
   * touches gains one reference.
   */
  allocateBytes(size: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      yield* debugPoint(self.storage, "cluster_alloc_bytes")
      const cs = self.clusterSize
      let offset = self.freeByteOffset
      if (offset !== 0) {
        const refcount = yield* self.get(Math.floor(offset / cs))
        if (refcount === 0 || refcount === self.maxRefcount) offset = 0
      }
      let freeInCluster = cs - (offset % cs)
      for (;;) {
        if (offset === 0 || freeInCluster < size) {
          const next = (yield* self.findFreeRun(1)) * cs
          if (next === 0) return yield* atOffsetZero("compressed cluster")
          if (offset === 0 || Math.ceil(offset / cs) * cs !== next) {
            offset = next
            freeInCluster = cs
          } else {
            freeInCluster += cs
          }
        }
        const first = Math.floor(offset / cs)
        const clusters = Math.floor((offset + size - 1) / cs) - first + 1
        if (yield* self.increaseFresh(first, clusters)) {
          offset = 0
          continue
        }
        yield* self.settleFreed(first, clusters)
        self.freeByteOffset = (offset + size) % cs === 0 ? 0 : offset + size
        yield* self.orderAfterAllocation()
        return offset
      }
    })
  }

  /**
   * `allocateBytes` without an Effect, in its common case: the bytes go
   * right after the previous compressed cluster, in its host cluster or
   * spilling into the next one, which is past every counted cluster (what
   * the free-cluster search would hand out), and everything that takes is
   * in memory: the refcount blocks are cached, no freed cluster waits, the
   * allocation ordering needs no flush, the store has no debug hooks.
   * Same result and state as `allocateBytes` then; undefined, with nothing
   * changed, otherwise (the caller runs `allocateBytes`).
   */
  allocateBytesNow(size: number): number | undefined {
    const offset = this.freeByteOffset
    if (offset === 0 || size <= 0 || size >= this.clusterSize || this.freedPending.size > 0 || !this.allocatesNow) return undefined
    const cs = this.clusterSize
    const first = Math.floor(offset / cs)
    const spills = cs - (offset % cs) < size
    if (spills && (this.freeClusterIndex !== first + 1 || first + 1 < this.endCluster || (first + 2) * cs > Limits.maxHostOffset)) return undefined
    const firstBlock = this.cachedBlock(first)
    const secondBlock = spills ? this.cachedBlock(first + 1) : undefined
    if (firstBlock === undefined || (spills && secondBlock === undefined)) return undefined
    const firstIndex = first % this.blockEntries
    const current = readRefcount(firstBlock.bytes, firstIndex, this.refcountOrder)
    if (current === 0 || current >= this.maxRefcount) return undefined
    writeRefcount(firstBlock.bytes, firstIndex, this.refcountOrder, current + 1)
    this.cache.markDirty(firstBlock.offset)
    if (secondBlock !== undefined) {
      // Past every counted cluster: its refcount is 0.
      writeRefcount(secondBlock.bytes, (first + 1) % this.blockEntries, this.refcountOrder, 1)
      this.cache.markDirty(secondBlock.offset)
      this.freeClusterIndex = first + 2
      this.endCluster = first + 2
    }
    this.freeByteOffset = (offset + size) % cs === 0 ? 0 : offset + size
    this.orderedNow()
    return offset
  }

  /**
   * Whether an allocation can run without an Effect: refcounts are plain
   * numbers (not 64-bit), the tail past the file end is known, the
   * allocation ordering (rule 1) can be declared without a flush, and the
   * store has no debug hooks. Each `…Now` method checks the rest of what it
   * needs, and declares the ordering (`orderedNow`) once it allocates.
   */
  private get allocatesNow(): boolean {
    return (
      this.refcountOrder !== 6 &&
      this.tailKnown &&
      this.storage.debugEvent === undefined &&
      this.storage.debugBreak === undefined &&
      (this.lazy || this.mappingCache.canDependNow(this.cache))
    )
  }

  /** `orderAfterAllocation` for an allocation made in plain code (possible whenever `allocatesNow` held). */
  private orderedNow(): void {
    if (!this.lazy) this.mappingCache.dependOnNow(this.cache)
  }

  /**
   * `allocate(count)` without an Effect, when every refcount block it reads
   * and raises is cached (the common case of a write into a growing image):
   * the same clusters and the same state afterwards. Undefined, with
   * nothing changed, otherwise (the caller runs `allocate`).
   */
  allocateNow(count: number): number | undefined {
    if (count < 1 || !this.allocatesNow) return undefined
    // findFreeRun's search, on cached blocks.
    let next = this.freeClusterIndex
    let run = 0
    while (run < count) {
      const cluster = next
      if (cluster >= this.endCluster) {
        next += count - run
        break
      }
      next++
      const refcount = this.refcountNow(cluster)
      if (refcount === undefined) return undefined
      run = refcount === 0 ? run + 1 : 0
    }
    const start = next - count
    if (start === 0 || next * this.clusterSize > Limits.maxHostOffset || !this.raiseFreshNow(start, count)) return undefined
    this.freeClusterIndex = next
    return start * this.clusterSize
  }

  /**
   * `allocateAt(first, count)` without an Effect, when every refcount block
   * it reads and raises is cached: how many clusters were allocated at
   * `first` (possibly none). Undefined, with nothing changed, otherwise.
   */
  allocateAtNow(first: number, count: number): number | undefined {
    if (first < 1) return 0
    if (!this.allocatesNow) return undefined
    let free = 0
    while (free < count && (first + free + 1) * this.clusterSize <= Limits.maxHostOffset) {
      const cluster = first + free
      if (cluster < this.endCluster) {
        const refcount = this.refcountNow(cluster)
        if (refcount === undefined) return undefined
        if (refcount !== 0) break
      }
      free++
    }
    if (free === 0) return 0
    return this.raiseFreshNow(first, free) ? free : undefined
  }

  /** The refcount of `clusterIndex` from a cached block (0 where no block covers it); undefined when not cached or the table entry is unusable. */
  private refcountNow(clusterIndex: number): number | undefined {
    const blockIndex = Math.floor(clusterIndex / this.blockEntries)
    const offset = this.blockAt(blockIndex)
    if (typeof offset !== "number") return undefined
    if (offset === 0) return 0
    const block = this.cache.lookup(offset)
    return block === undefined ? undefined : readRefcount(block, clusterIndex - blockIndex * this.blockEntries, this.refcountOrder)
  }

  /**
   * Sets the refcounts of free clusters [first, first + count) to 1, as
   * `increaseFresh` and `settleFreed` would, when that needs no new block,
   * no uncached block and no flush (none of them was freed since the
   * mapping tables were made durable); false, with nothing changed,
   * otherwise.
   */
  private raiseFreshNow(first: number, count: number): boolean {
    const end = first + count
    for (let cluster = first; cluster < end; cluster++) {
      // A block to be made first (refcountNow reads 0 there), a block not cached, a count already there, a cluster freed lately.
      if ((cluster === first || cluster % this.blockEntries === 0) && this.blockAt(Math.floor(cluster / this.blockEntries)) === 0) return false
      if (this.refcountNow(cluster) !== 0 || this.freedPending.has(cluster)) return false
    }
    for (let cluster = first; cluster < end; ) {
      const blockIndex = Math.floor(cluster / this.blockEntries)
      const offset = this.blockAt(blockIndex) as number
      const block = this.cache.lookup(offset) as Uint8Array
      const segmentEnd = Math.min(end, (blockIndex + 1) * this.blockEntries)
      for (; cluster < segmentEnd; cluster++) writeRefcount(block, cluster - blockIndex * this.blockEntries, this.refcountOrder, 1)
      this.cache.markDirty(offset)
    }
    if (end > this.endCluster) this.endCluster = end
    this.orderedNow()
    return true
  }

  /** The cached refcount block covering cluster `clusterIndex` and its offset; undefined when there is none or it is not cached. */
  private cachedBlock(clusterIndex: number): { readonly offset: number; readonly bytes: Uint8Array } | undefined {
    const offset = this.blockAt(Math.floor(clusterIndex / this.blockEntries))
    if (typeof offset !== "number" || offset === 0) return undefined
    const bytes = this.cache.lookup(offset)
    return bytes === undefined ? undefined : { offset, bytes }
  }

  /**
   * Gives back clusters allocated here and never referenced by any table
   * (refcount 1 to 0): free again at once, with no wait for the mapping
   * tables. A write allocates a run of clusters as QEMU does and takes
   * them one at a time.
   */
  giveBack(offset: number, length: number): Effect.Effect<void, Failure> {
    return this.update(offset, length, -1, true)
  }

  /**
   * Drops one reference from every cluster touched by [offset, offset + length).
   * Rule 3: the refcount blocks wait for the mapping tables that dropped the references.
   */
  free(offset: number, length: number, passDiscard = false): Effect.Effect<void, Failure> {
    return Effect.andThen(
      debugPoint(this.storage, "cluster_free"),
      Effect.andThen(this.lazy ? Effect.void : this.cache.dependOn(this.mappingCache), this.update(offset, length, -1, false, passDiscard ? this.toDiscard : undefined))
    )
  }

  /**
   * The host byte ranges of the clusters that `free` with `passDiscard`
   * left unreferenced since the last call, for the store to discard
   * (QEMU's discard passthrough: pass-discard-request, -snapshot). Take
   * them with the lock still held: a freed cluster can be handed out again
   * once the mapping tables are durable, and its discard must come first.
   */
  takeDiscards(): ReadonlyArray<{ readonly offset: number; readonly length: number }> {
    // Only clusters still freed and not handed out again since (a reuse first makes the frees durable and forgets them).
    const clusters = this.toDiscard
      .splice(0)
      .filter((cluster) => this.freedPending.has(cluster))
      .sort((a, b) => a - b)
    const ranges: Array<{ offset: number; length: number }> = []
    for (const cluster of clusters) {
      const last = ranges[ranges.length - 1]
      if (last !== undefined && last.offset + last.length === cluster * this.clusterSize) last.length += this.clusterSize
      else ranges.push({ offset: cluster * this.clusterSize, length: this.clusterSize })
    }
    return ranges
  }

  /**
   * Rule 1 for references written through (L1 entries, a new L1 table, a
   * header field): the refcount blocks reach disk first. Lazy refcounts
   * skip it; the dirty bit makes the next open rebuild them.
   */
  persistAllocations(): Effect.Effect<void, TableCacheError> {
    return this.lazy ? Effect.void : this.cache.flush()
  }

  /** Rule 1 for references kept in the mapping cache: its write-backs wait for the refcount blocks. */
  private orderAfterAllocation(): Effect.Effect<void, TableCacheError> {
    return this.lazy ? Effect.void : this.mappingCache.dependOn(this.cache)
  }

  /**
   * Before clusters freed earlier are handed out again, the mapping tables
   * that dropped them are made durable; otherwise a crash could leave the
   * old entry pointing at the new owner's data.
   */
  private settleFreed(first: number, count: number): Effect.Effect<void, TableCacheError> {
    if (this.freedPending.size === 0) return Effect.void
    let reused = false
    for (let c = first; c < first + count && !reused; c++) reused = this.freedPending.has(c)
    if (!reused) return Effect.void
    return Effect.andThen(this.mappingCache.flush(), Effect.sync(() => this.freedPending.clear()))
  }

  /**
   * Moves `endCluster` past every cluster counted beyond the end of the
   * file (crash leftovers), so that everything from it on is free. Reads
   * the refcount blocks past the file end once.
   */
  private learnTail(): Effect.Effect<void, Failure> {
    if (this.tailKnown) return Effect.void
    const self = this
    return Effect.gen(function* () {
      for (let b = Math.floor(self.endCluster / self.blockEntries); b <= self.lastBlock; b++) {
        // An unusable entry is reported when a cluster it covers is used.
        const offset = self.blockAt(b)
        if (typeof offset !== "number" || offset === 0) continue
        const block = yield* self.cache.get(offset)
        for (let i = self.blockEntries - 1; i >= 0; i--) {
          if (!refcountIsZero(block, i, self.refcountOrder)) {
            self.endCluster = Math.max(self.endCluster, b * self.blockEntries + i + 1)
            break
          }
        }
      }
      self.tailKnown = true
    })
  }

  /**
   * The first run of `count` clusters with refcount 0 from the free-cluster
   * index on (QEMU's alloc_clusters_noref): the index moves past the run,
   * and past every counted cluster it met on the way. Nothing is counted.
   */
  private findFreeRun(count: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      yield* self.learnTail()
      let run = 0
      while (run < count) {
        const cluster = self.freeClusterIndex
        if (cluster >= self.endCluster) {
          // Past every counted cluster, all is free.
          self.freeClusterIndex += count - run
          break
        }
        self.freeClusterIndex++
        run = (yield* self.get(cluster)) === 0 ? run + 1 : 0
      }
      if (self.freeClusterIndex * self.clusterSize > Limits.maxHostOffset) {
        return yield* new RefcountError({ reason: "NoSpace", message: "host offsets would exceed 2^56 bytes" })
      }
      return self.freeClusterIndex - count
    })
  }

  /**
   * Raises the refcounts of clusters [first, first + count) just found free
   * (QEMU's update_refcount during an allocation). Returns true, with
   * nothing raised, when a refcount block covering them had to be made
   * first: the caller searches again, from `first` at the earliest.
   */
  private increaseFresh(first: number, count: number): Effect.Effect<boolean, Failure> {
    const self = this
    let cluster = first
    const undo = Effect.suspend(() => (cluster > first ? self.update(first * self.clusterSize, (cluster - first) * self.clusterSize, -1, true) : Effect.void))
    const raise = Effect.gen(function* () {
      const end = first + count
      while (cluster < end) {
        const blockIndex = Math.floor(cluster / self.blockEntries)
        const blockOffset = self.blockAt(blockIndex)
        if (typeof blockOffset !== "number") return yield* blockOffset
        if (blockOffset === 0) {
          yield* debugPoint(self.storage, "refblock_alloc")
          yield* self.makeBlock(cluster)
          yield* undo
          self.freeClusterIndex = Math.min(self.freeClusterIndex, first)
          return true
        }
        const segmentEnd = Math.min(end, (blockIndex + 1) * self.blockEntries)
        yield* self.update(cluster * self.clusterSize, (segmentEnd - cluster) * self.clusterSize, 1)
        cluster = segmentEnd
      }
      return false
    })
    return Effect.onError(raise, () => Effect.ignore(undo))
  }

  /**
   * Makes the refcount block that covers cluster `clusterIndex` (QEMU's
   * alloc_refcount_block, the refcount table entry being empty). The block
   * takes the next free cluster; when that cluster is one the block
   * describes, it counts itself, otherwise its refcount is raised where it
   * belongs (which may make another block first). Rule 1: the block reaches
   * storage before the table entry naming it. When the table has no entry
   * for it, the table grows (`growTable`).
   */
  private makeBlock(clusterIndex: number): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      const tableIndex = Math.floor(clusterIndex / self.blockEntries)
      // The table entry written below may follow L2 table updates.
      yield* self.mappingCache.flush()
      const cluster = yield* self.findFreeRun(1)
      if (cluster === 0) return yield* atOffsetZero("refcount block")
      const offset = cluster * self.clusterSize
      yield* self.settleFreed(cluster, 1)
      if (Math.floor(cluster / self.blockEntries) === tableIndex) {
        const block = yield* self.cache.getEmpty(offset)
        writeRefcount(block, cluster - tableIndex * self.blockEntries, self.refcountOrder, 1)
        if (cluster >= self.endCluster) self.endCluster = cluster + 1
      } else {
        if (yield* self.increaseFresh(cluster, 1)) return
        yield* self.cache.flush()
        yield* self.cache.getEmpty(offset)
      }
      self.cache.markDirty(offset)
      self.overlaps.addCluster("refcount block", offset)
      const hookUp = Effect.gen(function* () {
        yield* debugPoint(self.storage, "refblock_alloc_write")
        yield* self.cache.flush()
        if (tableIndex < self.blockOffsets.length) {
          const entry = new Uint8Array(8)
          writeRefcountTableEntry(entry, 0, offset)
          yield* debugPoint(self.storage, "refblock_alloc_hookup")
          yield* self.storage.write(self.table.offset + tableIndex * 8, entry)
          yield* self.storage.flush()
          self.tableBytes.set(entry, tableIndex * 8)
          self.blockOffsets[tableIndex] = offset
          if (tableIndex > self.lastBlock) self.lastBlock = tableIndex
          return
        }
        yield* debugPoint(self.storage, "reftable_grow")
        const blocksUsed = Math.ceil((Math.max(clusterIndex, cluster) + 1) / self.blockEntries)
        yield* self.growTable(blocksUsed * self.blockEntries, tableIndex, offset)
      })
      // A block never named by the table must not be written back later over whatever reuses its cluster.
      yield* Effect.onError(hookUp, () => Effect.sync(() => self.forgetBlock(offset)))
    })
  }

  /** Drops a refcount block that was made but never entered into the table. */
  private forgetBlock(offset: number): void {
    if (this.blockOffsets.includes(offset)) return
    this.cache.invalidate(offset)
    this.overlaps.removeCluster("refcount block", offset)
  }

  /**
   * Moves the refcount table to a larger one (QEMU's qcow2_refcount_area
   * as alloc_refcount_block uses it): from cluster `startCluster` on (the
   * start of a refcount block's range, past everything counted) come new
   * refcount blocks for the whole area, then the new table, sized for the
   * image up to there with half as much again to grow into; the blocks
   * count the area. Blocks, then table, are written and flushed, the
   * header is switched, then the old table is freed. The table names the
   * block just made, `newBlock` at `newOffset`, too.
   */
  private growTable(startCluster: number, newBlock: number, newOffset: number): Effect.Effect<void, Failure> {
    const self = this
    const created: number[] = []
    const grow = Effect.gen(function* () {
      const cs = self.clusterSize
      const totalBlocks = refcountBlocksWithRoom(startCluster, cs, self.blockEntries)
      const perTableCluster = cs / 8
      const tableClusters = Math.ceil((totalBlocks + Math.ceil(totalBlocks / 2)) / perTableCluster)
      const tableBytesLength = tableClusters * cs
      if (tableBytesLength > Limits.maxRefcountTableBytes) {
        return yield* new RefcountError({
          reason: "NoSpace",
          message: `the refcount table would grow past ${Limits.maxRefcountTableBytes} bytes`
        })
      }
      const newTable = new Uint8Array(tableBytesLength)
      newTable.set(self.tableBytes.subarray(0, (self.lastBlock + 1) * 8))
      writeRefcountTableEntry(newTable, newBlock, newOffset)
      // The area starts past the old table's range: every block covering it is new.
      const areaBlock = startCluster / self.blockEntries
      const tableCluster = startCluster + (totalBlocks - areaBlock)
      const endCluster = tableCluster + tableClusters
      // Nothing counted may lie past endCluster (free-space search shortcut).
      self.endCluster = Math.max(self.endCluster, endCluster)
      for (let b = areaBlock; b < totalBlocks; b++) {
        const offset = (startCluster + b - areaBlock) * cs
        const block = yield* self.cache.getEmpty(offset)
        created.push(offset)
        writeRefcountTableEntry(newTable, b, offset)
        const firstCovered = b * self.blockEntries
        const last = Math.min(endCluster - firstCovered, self.blockEntries)
        for (let j = Math.max(0, startCluster - firstCovered); j < last; j++) writeRefcount(block, j, self.refcountOrder, 1)
        self.cache.markDirty(offset)
      }
      yield* debugPoint(self.storage, "refblock_alloc_write_blocks")
      yield* self.cache.flush()
      yield* debugPoint(self.storage, "refblock_alloc_write_table")
      yield* self.storage.write(tableCluster * cs, newTable)
      yield* self.storage.flush()
      const oldTable = self.table
      const moved = { offset: tableCluster * cs, clusters: tableClusters }
      yield* debugPoint(self.storage, "refblock_alloc_switch_table")
      yield* self.header.moveRefcountTable(moved)
      self.adoptTable(moved, newTable, endCluster * cs)
      yield* self.free(oldTable.offset, oldTable.clusters * cs)
    })
    return Effect.onError(grow, () => Effect.sync(() => created.forEach((offset) => self.forgetBlock(offset))))
  }
}

/**
 * How many refcount blocks an image of `clusters` clusters needs, counting
 * the refcount structures themselves, when the table is to have room to
 * grow: the fixed point of QEMU's qcow2_refcount_metadata_size with its
 * generous increase (half the table's clusters again, once).
 */
function refcountBlocksWithRoom(clusters: number, clusterSize: number, blockEntries: number): number {
  const perTableCluster = clusterSize / 8
  let counted = clusters
  let table = 0
  let blocks = 0
  let total = 0
  let generous = true
  for (;;) {
    const last = total
    blocks = Math.ceil((counted + table + blocks) / blockEntries)
    table = Math.ceil(blocks / perTableCluster)
    total = counted + blocks + table
    if (total !== last) continue
    if (!generous) return blocks
    counted += Math.ceil(table / 2)
    total = 0
    generous = false
  }
}

/** QEMU's refusal to put a refcount block, an L2 table or compressed data over the header (its refcount read 0). */
function atOffsetZero(what: string): Effect.Effect<never, RefcountError> {
  return Effect.fail(new RefcountError({ reason: "Corrupt", message: `Preventing invalid allocation of ${what} at offset 0`, offset: 0 }))
}

/** Whether 64-bit refcount `index` fits a safe integer. */
function fitsNumber(block: Uint8Array, index: number): boolean {
  return new DataView(block.buffer, block.byteOffset + index * 8, 8).getUint32(0) <= 0x1fffff
}

/**
 * Adds `delta` to 64-bit refcount `index` (one past 2^53) exactly; the
 * reason when the result would leave 0..2^64-1 (nothing changed then).
 */
function updateWide(block: Uint8Array, index: number, delta: number): "Overflow" | "Underflow" | undefined {
  const view = new DataView(block.buffer, block.byteOffset + index * 8, 8)
  const next = view.getBigUint64(0) + BigInt(delta)
  if (next < 0n) return "Underflow"
  if (next > 0xffffffffffffffffn) return "Overflow"
  view.setBigUint64(0, next)
  return undefined
}

/** Whether entry `index` of a refcount block is 0 (an entry too large for a safe integer is not). */
function refcountIsZero(block: Uint8Array, index: number, order: number): boolean {
  try {
    return readRefcount(block, index, order) === 0
  } catch {
    return false
  }
}

/**
 * How many of the table's 8-byte entries there are up to its last non-zero
 * one: a table is allocated with room to grow (a new image uses 1 of its
 * 8192), and every open decodes it, so the empty rest is found by a plain
 * scan of 32-bit words instead of decoding each entry.
 */
function usedEntries(table: Uint8Array): number {
  const count = Math.floor(table.length / 8)
  if (table.byteOffset % 4 === 0) {
    const words = new Uint32Array(table.buffer, table.byteOffset, count * 2)
    let w = words.length - 1
    while (w >= 0 && words[w] === 0) w--
    return w < 0 ? 0 : (w >> 1) + 1
  }
  let b = count * 8 - 1
  while (b >= 0 && table[b] === 0) b--
  return b < 0 ? 0 : (b >> 3) + 1
}

/**
 * The offset of every refcount table entry (spec: "Refcount table entry",
 * bits 9-63), INVALID_ENTRY where one does not fit 2^53 (reported when
 * used); the entries from `used` on are empty (0). One pass with no object
 * or exception per entry.
 */
function refcountTableOffsets(table: Uint8Array, used: number): number[] {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength)
  const offsets = new Array<number>(Math.floor(table.length / 8)).fill(0)
  for (let i = 0; i < used; i++) {
    const high = view.getUint32(i * 8)
    offsets[i] = high > MAX_SAFE_HIGH ? INVALID_ENTRY : high * 2 ** 32 + ((view.getUint32(i * 8 + 4) & 0xfffffe00) >>> 0)
  }
  return offsets
}
