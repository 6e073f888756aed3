/**
 * Refcounts and cluster allocation (qcow2.txt "Host cluster management").
 * Longer than most modules on purpose: allocation, refcount block creation
 * and refcount table growth share one free-space state (hint, end of
 * allocated clusters, freed-but-not-durable clusters) and one set of
 * ordering rules; split apart, each piece would need the others' internals.
 */
import { Effect } from "effect"
import {
  Limits,
  maxRefcount,
  readRefcount,
  writeRefcount,
  writeRefcountTableEntry
} from "@qcow2/format"
import type { TableCache, TableCacheError } from "@qcow2/cache"
import type { OverlapIndex } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
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
  /** Lowest cluster index that may be free (cluster 0 is always the header). */
  private freeClusterHint = 1
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
    this.freeClusterHint = 1
    this.freeByteOffset = 0
    this.endCluster = 0
    this.freedPending.clear()
    this.adoptTable(table, tableBytes, fileSize)
  }

  private adoptTable(table: RefcountTableLocation, tableBytes: Uint8Array, fileSize: number): void {
    this.table = table
    this.tableBytes = tableBytes
    this.overlaps.setRanges("refcount table", [{ offset: table.offset, length: table.clusters * this.clusterSize }])
    this.overlaps.clearClusters("refcount block")
    this.blockOffsets = refcountTableOffsets(tableBytes)
    this.lastBlock = -1
    this.tailKnown = false
    for (let i = 0; i < this.blockOffsets.length; i++) {
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
    if (offset === INVALID_ENTRY || offset % this.clusterSize !== 0) {
      const shown = offset === INVALID_ENTRY ? "beyond 2^53" : `0x${offset.toString(16)}`
      return new RefcountError({
        reason: "Corrupt",
        message: `Refblock offset ${shown} unaligned (reftable index: 0x${blockIndex.toString(16)})`,
        offset: this.table.offset + blockIndex * 8
      })
    }
    return offset
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
   * Drops refcount blocks that count nothing but (possibly) themselves
   * (QEMU's qcow2_shrink_reftable, after a shrink freed the clusters they
   * described): the table entry is emptied and made durable first, then
   * the block's own cluster is freed.
   */
  dropUnusedBlocks(): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      for (let b = self.lastBlock; b >= 1; b--) {
        const offset = self.blockAt(b)
        if (typeof offset !== "number" || offset === 0) continue
        const block = self.cache.lookup(offset) ?? (yield* self.cache.get(offset))
        const own = offset / self.clusterSize - b * self.blockEntries
        const selfCounted = own >= 0 && own < self.blockEntries
        let unused = true
        for (let i = 0; i < self.blockEntries && unused; i++) {
          if (selfCounted && i === own) unused = refcountIsOne(block, i, self.refcountOrder)
          else unused = refcountIsZero(block, i, self.refcountOrder)
        }
        if (!unused) continue
        const entry = new Uint8Array(8)
        yield* self.storage.write(self.table.offset + b * 8, entry)
        yield* self.storage.flush()
        self.tableBytes.set(entry, b * 8)
        self.blockOffsets[b] = 0
        self.cache.invalidate(offset)
        self.overlaps.removeCluster("refcount block", offset)
        if (!selfCounted) yield* self.update(offset, self.clusterSize, -1)
      }
      while (self.lastBlock >= 0 && (self.blockOffsets[self.lastBlock] ?? 0) === 0) self.lastBlock--
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
   * Adds `delta` to the refcount of every cluster touched by the byte range
   * [offset, offset + length). Increases need every refcount block to exist
   * already (allocation paths call `ensureBlocks` first). A result above the
   * maximum fails with `Overflow`, below zero with `Corrupt`; nothing is
   * changed for the failing cluster.
   */
  private update(offset: number, length: number, delta: number): Effect.Effect<void, Failure> {
    if (length <= 0 || delta === 0) return Effect.void
    const self = this
    return Effect.gen(function* () {
      const first = Math.floor(offset / self.clusterSize)
      const last = Math.floor((offset + length - 1) / self.clusterSize)
      let cluster = first
      while (cluster <= last) {
        const blockIndex = Math.floor(cluster / self.blockEntries)
        self.storage.debugEvent?.("refblock_alloc")
        const blockOffset = self.blockAt(blockIndex)
        if (typeof blockOffset !== "number") return yield* blockOffset
        if (blockOffset === 0) {
          if (delta < 0) {
            return yield* new RefcountError({
              reason: "Corrupt",
              message: `cannot decrease the refcount of cluster ${cluster}: no refcount block covers it`,
              offset: cluster * self.clusterSize
            })
          }
          yield* self.ensureBlocks(cluster, 1)
          continue
        }
        self.storage.debugEvent?.("refblock_load")
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
          if (next < 0) {
            return yield* new RefcountError({
              reason: "Corrupt",
              message: `refcount of cluster ${cluster} would drop below zero (refcount=${current})`,
              offset: cluster * self.clusterSize
            })
          }
          if (next > self.maxRefcount) {
            return yield* new RefcountError({
              reason: "Overflow",
              message: `refcount of cluster ${cluster} would exceed ${self.maxRefcount} (refcount_bits=${2 ** self.refcountOrder})`,
              offset: cluster * self.clusterSize
            })
          }
          writeRefcount(block, index, self.refcountOrder, next)
          self.cache.markDirty(blockOffset)
          if (next === 0) {
            if (cluster < self.freeClusterHint) self.freeClusterHint = Math.max(1, cluster)
            self.freedPending.add(cluster)
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
   * Allocates `count` contiguous free clusters and sets their refcounts to 1.
   * Returns the host offset of the first. Searches from a free-space hint,
   * not from zero.
   */
  allocate(count: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      self.storage.debugEvent?.("cluster_alloc")
      for (;;) {
        const start = yield* self.findFree(self.freeClusterHint, count)
        // Refcount blocks for the run may have to be created; their own
        // clusters can land inside the run, so search again when they do.
        const created = yield* self.ensureBlocks(start, count)
        if (created) continue
        if (!(yield* self.allFree(start, count))) continue
        yield* self.settleFreed(start, count)
        yield* self.update(start * self.clusterSize, count * self.clusterSize, 1)
        if (start === self.freeClusterHint) self.freeClusterHint = start + count
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
        // New refcount blocks may land inside the run: count again when they do.
        if (yield* self.ensureBlocks(first, free)) continue
        yield* self.settleFreed(first, free)
        yield* self.update(first * self.clusterSize, free * self.clusterSize, 1)
        if (first === self.freeClusterHint) self.freeClusterHint = first + free
        yield* self.orderAfterAllocation()
        return free
      }
    })
  }

  /**
   * Allocates `size` bytes for a compressed cluster, packed at byte
   * granularity after the previous one (spec: compressed clusters may share
   * host clusters). Every host cluster the range touches gains one reference.
   */
  allocateBytes(size: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      self.storage.debugEvent?.("cluster_alloc_bytes")
      let offset = self.freeByteOffset
      if (offset !== 0) {
        const refcount = yield* self.get(Math.floor(offset / self.clusterSize))
        if (refcount === 0 || refcount === self.maxRefcount) offset = 0
      }
      for (;;) {
        let freeInCluster = offset === 0 ? 0 : self.clusterSize - (offset % self.clusterSize)
        if (offset === 0 || freeInCluster < size) {
          const needed = Math.ceil((size - freeInCluster) / self.clusterSize)
          const next = yield* self.findFree(self.freeClusterHint, Math.max(1, needed))
          const continues = offset !== 0 && Math.ceil(offset / self.clusterSize) === next
          if (!continues) {
            offset = next * self.clusterSize
            freeInCluster = self.clusterSize
          }
          const created = yield* self.ensureBlocks(Math.floor(offset / self.clusterSize), Math.ceil((offset % self.clusterSize + size) / self.clusterSize))
          if (created) continue
          const firstNew = continues ? next : Math.floor(offset / self.clusterSize)
          const lastNeeded = Math.floor((offset + size - 1) / self.clusterSize)
          if (!(yield* self.allFree(firstNew, lastNeeded - firstNew + 1))) {
            offset = 0
            continue
          }
          yield* self.settleFreed(firstNew, lastNeeded - firstNew + 1)
        }
        yield* self.update(offset, size, 1)
        self.freeByteOffset = (offset + size) % self.clusterSize === 0 ? 0 : offset + size
        yield* self.orderAfterAllocation()
        return offset
      }
    })
  }

  /**
   * Drops one reference from every cluster touched by [offset, offset + length).
   * Rule 3: the refcount blocks wait for the mapping tables that dropped the references.
   */
  free(offset: number, length: number): Effect.Effect<void, Failure> {
    this.storage.debugEvent?.("cluster_free")
    return Effect.andThen(this.lazy ? Effect.void : this.cache.dependOn(this.mappingCache), this.update(offset, length, -1))
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

  /** Whether every cluster in [first, first + count) has refcount 0. */
  private allFree(first: number, count: number): Effect.Effect<boolean, Failure> {
    const self = this
    return Effect.gen(function* () {
      yield* self.learnTail()
      for (let c = first; c < first + count; c++) {
        if (c >= self.endCluster) return true
        if ((yield* self.get(c)) !== 0) return false
      }
      return true
    })
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

  /** First run of `count` free clusters at or after `from`. */
  private findFree(from: number, count: number): Effect.Effect<number, Failure> {
    const self = this
    if (this.tailKnown && from >= this.endCluster) return Effect.succeed(Math.max(from, 1))
    return Effect.gen(function* () {
      yield* self.learnTail()
      let start = Math.max(from, 1)
      let run = 0
      for (let cluster = start; ; cluster++) {
        // Past every counted cluster, all is free.
        if (cluster >= self.endCluster) return run === 0 ? cluster : start
        if ((cluster + 1) * self.clusterSize > Limits.maxHostOffset) {
          return yield* new RefcountError({ reason: "NoSpace", message: "host offsets would exceed 2^56 bytes" })
        }
        const refcount = yield* self.get(cluster)
        if (refcount === 0) {
          if (run === 0) start = cluster
          run++
          if (run === count) return start
        } else {
          run = 0
          if (cluster === self.freeClusterHint) self.freeClusterHint = cluster + 1
        }
      }
    })
  }

  /**
   * Makes sure refcount blocks cover clusters [first, first + count),
   * creating blocks and growing the refcount table as needed. Returns true
   * if anything was allocated (so the caller's view of free space is stale).
   */
  ensureBlocks(first: number, count: number): Effect.Effect<boolean, Failure> {
    const self = this
    return Effect.gen(function* () {
      const firstBlock = Math.floor(first / self.blockEntries)
      const lastBlock = Math.floor((first + count - 1) / self.blockEntries)
      let created = false
      for (let block = firstBlock; block <= lastBlock; block++) {
        // An unusable entry (INVALID_ENTRY) counts as present: using it reports the corruption.
        if (block < self.blockOffsets.length && self.blockOffsets[block] !== 0) continue
        self.storage.debugEvent?.("refblock_alloc")
        if (block >= self.blockOffsets.length) {
          yield* self.growTable(block)
        } else {
          yield* self.createBlock(block)
        }
        created = true
      }
      return created
    })
  }

  /**
   * Creates the refcount block `blockIndex` (which the table has room for).
   * The block goes into the first free cluster; when that cluster is one the
   * new block describes, the block counts itself.
   */
  private createBlock(blockIndex: number): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      for (;;) {
        const cluster = yield* self.findFree(self.freeClusterHint, 1)
        const ownerBlock = Math.floor(cluster / self.blockEntries)
        const offset = cluster * self.clusterSize
        if (ownerBlock === blockIndex) {
          yield* self.settleFreed(cluster, 1)
          const block = yield* self.cache.getEmpty(offset)
          writeRefcount(block, cluster - blockIndex * self.blockEntries, self.refcountOrder, 1)
          self.cache.markDirty(offset)
        } else {
          if (ownerBlock >= self.blockOffsets.length || self.blockOffsets[ownerBlock] === 0) {
            yield* self.ensureBlocks(cluster, 1)
            continue
          }
          yield* self.settleFreed(cluster, 1)
          yield* self.update(offset, self.clusterSize, 1)
          yield* self.cache.getEmpty(offset)
        }
        if (cluster >= self.endCluster) self.endCluster = cluster + 1
        self.overlaps.addCluster("refcount block", offset)
        // Rule 1: the block reaches storage before the table entry naming it.
        self.storage.debugEvent?.("refblock_alloc_write")
        yield* self.cache.flush()
        const entry = new Uint8Array(8)
        writeRefcountTableEntry(entry, 0, offset)
        self.storage.debugEvent?.("refblock_alloc_hookup")
        yield* self.storage.write(self.table.offset + blockIndex * 8, entry)
        yield* self.storage.flush()
        self.tableBytes.set(entry, blockIndex * 8)
        self.blockOffsets[blockIndex] = offset
        if (blockIndex > self.lastBlock) self.lastBlock = blockIndex
        return
      }
    })
  }

  /**
   * Moves the refcount table to a larger one at the end of the image so
   * that it has an entry for `neededBlock`. The new table and the refcount
   * blocks that describe it (and themselves) are written first, then the
   * header is switched over, then the old table is freed.
   */
  private growTable(neededBlock: number): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      const oldEntries = self.blockOffsets.length
      const start = Math.max(self.endCluster, yield* self.findFree(self.freeClusterHint, 1))
      const entriesPerCluster = self.clusterSize / 8
      let tableClusters = Math.ceil(Math.max(neededBlock + 1, Math.ceil(oldEntries * 1.5), 1) / entriesPerCluster)
      let newBlocks: number[] = []
      for (;;) {
        // Blocks needed: neededBlock plus every block covering the new area.
        const wanted = new Set<number>()
        if (neededBlock >= oldEntries || self.blockOffsets[neededBlock] === 0) wanted.add(neededBlock)
        const areaEnd = start + tableClusters + newBlocks.length
        for (let b = Math.floor(start / self.blockEntries); b <= Math.floor((areaEnd - 1) / self.blockEntries); b++) {
          if (b >= oldEntries || self.blockOffsets[b] === 0) wanted.add(b)
        }
        const blocks = [...wanted].sort((a, b) => a - b)
        const maxBlock = blocks.length > 0 ? blocks[blocks.length - 1] : 0
        const neededClusters = Math.ceil(Math.max(maxBlock + 1, oldEntries) / entriesPerCluster)
        if (neededClusters > tableClusters) {
          tableClusters = neededClusters
          continue
        }
        if (blocks.length === newBlocks.length && blocks.every((b, i) => b === newBlocks[i])) break
        newBlocks = blocks
      }
      const tableBytesLength = tableClusters * self.clusterSize
      if (tableBytesLength > Limits.maxRefcountTableBytes) {
        return yield* new RefcountError({
          reason: "NoSpace",
          message: `the refcount table would grow past ${Limits.maxRefcountTableBytes} bytes`
        })
      }
      const areaStart = start
      const areaClusters = tableClusters + newBlocks.length
      const tableOffset = areaStart * self.clusterSize
      // The area is taken from here on, even if the move fails half way
      // (its clusters may already be counted): nothing past endCluster may be.
      self.endCluster = Math.max(self.endCluster, areaStart + areaClusters)
      // Write the new refcount blocks, each counting the area clusters it covers.
      const blockOffsetOf = new Map<number, number>()
      newBlocks.forEach((b, i) => blockOffsetOf.set(b, (areaStart + tableClusters + i) * self.clusterSize))
      const newTable = new Uint8Array(tableBytesLength)
      newTable.set(self.tableBytes.subarray(0, Math.min(self.tableBytes.length, tableBytesLength)))
      // QEMU writes the block it needed first, then grows the table and writes the blocks describing it.
      self.storage.debugEvent?.("refblock_alloc_write")
      self.storage.debugEvent?.("reftable_grow")
      self.storage.debugEvent?.("refblock_alloc_write_blocks")
      for (const [b, offset] of blockOffsetOf) {
        const block = new Uint8Array(self.clusterSize)
        for (let c = areaStart; c < areaStart + areaClusters; c++) {
          if (Math.floor(c / self.blockEntries) === b) writeRefcount(block, c - b * self.blockEntries, self.refcountOrder, 1)
        }
        yield* self.storage.write(offset, block)
        writeRefcountTableEntry(newTable, b, offset)
      }
      // Area clusters covered by blocks that already exist get their refcount there.
      const oldCovered: Array<number> = []
      for (let c = areaStart; c < areaStart + areaClusters; c++) {
        if (!blockOffsetOf.has(Math.floor(c / self.blockEntries))) oldCovered.push(c)
      }
      for (const c of oldCovered) {
        const b = Math.floor(c / self.blockEntries)
        const blockOffset = self.blockAt(b)
        if (typeof blockOffset !== "number") return yield* blockOffset
        const block = yield* self.cache.get(blockOffset)
        writeRefcount(block, c - b * self.blockEntries, self.refcountOrder, 1)
        self.cache.markDirty(blockOffset)
      }
      yield* self.cache.flushTables()
      self.storage.debugEvent?.("refblock_alloc_write_table")
      yield* self.storage.write(tableOffset, newTable)
      yield* self.storage.flush()
      const oldTable = self.table
      const moved = { offset: tableOffset, clusters: tableClusters }
      self.storage.debugEvent?.("refblock_alloc_switch_table")
      yield* self.header.moveRefcountTable(moved)
      self.adoptTable(moved, newTable, (areaStart + areaClusters) * self.clusterSize)
      yield* self.free(oldTable.offset, oldTable.clusters * self.clusterSize)
    })
  }
}

/** Whether 64-bit refcount `index` fits a safe integer. */
function fitsNumber(block: Uint8Array, index: number): boolean {
  return new DataView(block.buffer, block.byteOffset + index * 8, 8).getUint32(0) <= 0x1fffff
}

/**
 * Adds `delta` to 64-bit refcount `index` (one past 2^53) exactly; the
 * reason when the result would leave 0..2^64-1 (nothing changed then).
 */
function updateWide(block: Uint8Array, index: number, delta: number): "Overflow" | "Corrupt" | undefined {
  const view = new DataView(block.buffer, block.byteOffset + index * 8, 8)
  const next = view.getBigUint64(0) + BigInt(delta)
  if (next < 0n) return "Corrupt"
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

/** Whether entry `index` of a refcount block is exactly 1. */
function refcountIsOne(block: Uint8Array, index: number, order: number): boolean {
  try {
    return readRefcount(block, index, order) === 1
  } catch {
    return false
  }
}

/**
 * The offset of every refcount table entry (spec: "Refcount table entry",
 * bits 9-63), INVALID_ENTRY where one does not fit 2^53 (reported when
 * used). One pass with no object or exception per entry: every open decodes
 * the whole table, 8192 entries per cluster of it.
 */
function refcountTableOffsets(table: Uint8Array): number[] {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength)
  const offsets: number[] = []
  for (let o = 0; o + 8 <= table.length; o += 8) {
    const high = view.getUint32(o)
    offsets.push(high > MAX_SAFE_HIGH ? INVALID_ENTRY : high * 2 ** 32 + ((view.getUint32(o + 4) & 0xfffffe00) >>> 0))
  }
  return offsets
}
