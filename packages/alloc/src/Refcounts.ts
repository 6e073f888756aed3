import { Effect } from "effect"
import {
  Limits,
  maxRefcount,
  readRefcount,
  readRefcountTableEntry,
  writeRefcount,
  writeRefcountTableEntry
} from "@qcow2/format"
import type { TableCache } from "@qcow2/cache"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { RefcountError } from "./errors.js"

/** Where the refcount table lives; reported to the driver when it moves. */
export interface RefcountTableLocation {
  readonly offset: number
  readonly clusters: number
}

export interface RefcountsOptions {
  readonly storage: BlockStorageShape
  readonly clusterBits: number
  readonly refcountOrder: number
  readonly table: RefcountTableLocation
  /** The whole refcount table as read from the image (refcount_table_clusters clusters). */
  readonly tableBytes: Uint8Array
  readonly blockCache: TableCache
  /** Current size of the image file, to start allocation past its end when nothing is free. */
  readonly fileSize: number
  /**
   * Writes the header fields that locate the refcount table (rule 4: header
   * changes are written through with flush barriers around them).
   */
  readonly commitTableLocation: (location: RefcountTableLocation) => Effect.Effect<void, StorageError>
  /** Pass freed clusters to storage as discards (QEMU's pass-discard-request). */
  readonly discardFreed?: boolean
}

type Failure = RefcountError | StorageError

/**
 * The refcount table, its refcount blocks and cluster allocation
 * (spec: "Host cluster management"). Every method must be called with the
 * driver's metadata lock held; pure arithmetic stays outside Effect.
 *
 * Refcounts count references: 0 free, 1 owned by one user, >= 2 shared
 * (a write must copy first).
 */
export class Refcounts {
  readonly clusterBits: number
  readonly clusterSize: number
  readonly refcountOrder: number
  /** Entries per refcount block. */
  readonly blockEntries: number
  private readonly blockEntriesBits: number
  readonly maxRefcount: number
  private readonly storage: BlockStorageShape
  /** The refcount block cache (the driver sets flush dependencies on it). */
  readonly cache: TableCache
  private readonly commitTableLocation: RefcountsOptions["commitTableLocation"]
  private readonly discardFreed: boolean
  private table: RefcountTableLocation
  private tableBytes: Uint8Array
  /** Refcount block offsets by block index (0 = none), decoded once. */
  private blockOffsets: number[]
  private blockSet = new Set<number>()
  /** Lowest cluster index that may be free (cluster 0 is always the header). */
  private freeClusterHint = 1
  /** Next free byte for compressed data packing (0 = start a new cluster). */
  private freeByteOffset = 0
  /** One past the highest cluster index known to be in use or allocated. */
  private endCluster: number

  constructor(options: RefcountsOptions) {
    this.clusterBits = options.clusterBits
    this.clusterSize = 2 ** options.clusterBits
    this.refcountOrder = options.refcountOrder
    this.blockEntriesBits = options.clusterBits + 3 - options.refcountOrder
    this.blockEntries = 2 ** this.blockEntriesBits
    this.maxRefcount = maxRefcount(options.refcountOrder)
    this.storage = options.storage
    this.cache = options.blockCache
    this.commitTableLocation = options.commitTableLocation
    this.discardFreed = options.discardFreed ?? false
    this.table = options.table
    this.tableBytes = options.tableBytes
    this.blockOffsets = []
    const entries = options.tableBytes.length / 8
    for (let i = 0; i < entries; i++) this.blockOffsets.push(readRefcountTableEntry(options.tableBytes, i).offset)
    for (const o of this.blockOffsets) if (o !== 0) this.blockSet.add(o)
    this.endCluster = Math.ceil(options.fileSize / this.clusterSize)
  }

  get tableLocation(): RefcountTableLocation {
    return this.table
  }

  /** Offsets of every refcount block (0 where none), by block index. */
  get refcountBlockOffsets(): ReadonlyArray<number> {
    return this.blockOffsets
  }

  /** Whether a refcount block lives at host offset `offset`. */
  isBlock(offset: number): boolean {
    return this.blockSet.has(offset)
  }

  /** One past the highest cluster index allocated so far (or the file end). */
  get endOfAllocatedClusters(): number {
    return this.endCluster
  }

  /** The refcount of host cluster `clusterIndex` (0 if no refcount block covers it). */
  get(clusterIndex: number): Effect.Effect<number, Failure> {
    const blockIndex = Math.floor(clusterIndex / this.blockEntries)
    const blockOffset = blockIndex < this.blockOffsets.length ? this.blockOffsets[blockIndex] : 0
    if (blockOffset === 0) return Effect.succeed(0)
    const index = clusterIndex - blockIndex * this.blockEntries
    const cached = this.cache.lookup(blockOffset)
    if (cached !== undefined) return this.decode(cached, index, clusterIndex)
    return Effect.flatMap(this.cache.get(blockOffset), (block) => this.decode(block, index, clusterIndex))
  }

  private decode(block: Uint8Array, index: number, clusterIndex: number): Effect.Effect<number, RefcountError> {
    try {
      return Effect.succeed(readRefcount(block, index, this.refcountOrder))
    } catch {
      return Effect.fail(
        new RefcountError({
          reason: "Corrupt",
          message: `refcount of cluster ${clusterIndex} does not fit a safe integer`,
          offset: clusterIndex * this.clusterSize
        })
      )
    }
  }

  /**
   * Adds `delta` to the refcount of every cluster touched by the byte range
   * [offset, offset + length). Increases need every refcount block to exist
   * already (allocation paths call `ensureBlocks` first). A result above the
   * maximum fails with `Overflow`, below zero with `Corrupt`; nothing is
   * changed for the failing cluster. Clusters reaching 0 become allocatable
   * again and are discarded when asked.
   */
  update(offset: number, length: number, delta: number): Effect.Effect<void, Failure> {
    if (length <= 0 || delta === 0) return Effect.void
    const self = this
    return Effect.gen(function* () {
      const first = Math.floor(offset / self.clusterSize)
      const last = Math.floor((offset + length - 1) / self.clusterSize)
      let cluster = first
      while (cluster <= last) {
        const blockIndex = Math.floor(cluster / self.blockEntries)
        const blockOffset = blockIndex < self.blockOffsets.length ? self.blockOffsets[blockIndex] : 0
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
        const block = self.cache.lookup(blockOffset) ?? (yield* self.cache.get(blockOffset))
        const blockEnd = Math.min(last, (blockIndex + 1) * self.blockEntries - 1)
        for (; cluster <= blockEnd; cluster++) {
          const index = cluster - blockIndex * self.blockEntries
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
            if (self.discardFreed) yield* self.storage.discard(cluster * self.clusterSize, self.clusterSize)
          } else if (cluster >= self.endCluster) {
            self.endCluster = cluster + 1
          }
        }
      }
    })
  }

  /** Sets a refcount to an absolute value (repair). */
  set(clusterIndex: number, value: number): Effect.Effect<void, Failure> {
    const self = this
    return Effect.gen(function* () {
      const current = yield* self.get(clusterIndex)
      if (current === value) return
      if (value > 0) yield* self.ensureBlocks(clusterIndex, 1)
      yield* self.update(clusterIndex * self.clusterSize, self.clusterSize, value - current)
    })
  }

  /**
   * Allocates `count` contiguous free clusters and sets their refcounts to 1.
   * Returns the host offset of the first. Searches from a free-space hint,
   * not from zero.
   */
  allocate(count: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      for (;;) {
        const start = yield* self.findFree(self.freeClusterHint, count)
        // Refcount blocks for the run may have to be created; their own
        // clusters can land inside the run, so search again when they do.
        const created = yield* self.ensureBlocks(start, count)
        if (created) continue
        let taken = false
        // Past the end of everything allocated, every cluster is free.
        for (let i = 0; i < count && start + i < self.endCluster; i++) {
          if ((yield* self.get(start + i)) !== 0) {
            taken = true
            break
          }
        }
        if (taken) continue
        yield* self.update(start * self.clusterSize, count * self.clusterSize, 1)
        if (start === self.freeClusterHint) self.freeClusterHint = start + count
        return start * self.clusterSize
      }
    })
  }

  /**
   * Takes as many of the `count` clusters starting at `offset` as are free,
   * stopping at the first one in use; returns how many it took (QEMU's
   * allocation at a given offset, used to extend a run in place).
   */
  allocateAt(offset: number, count: number): Effect.Effect<number, Failure> {
    const self = this
    return Effect.gen(function* () {
      const first = offset / self.clusterSize
      let free = 0
      while (free < count && (yield* self.get(first + free)) === 0) free++
      if (free === 0) return 0
      yield* self.ensureBlocks(first, free)
      let still = 0
      while (still < free && (yield* self.get(first + still)) === 0) still++
      if (still > 0) yield* self.update(offset, still * self.clusterSize, 1)
      return still
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
      let offset = self.freeByteOffset
      if (offset !== 0) {
        const refcount = yield* self.get(Math.floor(offset / self.clusterSize))
        if (refcount === self.maxRefcount) offset = 0
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
          let taken = false
          for (let c = firstNew; c <= lastNeeded; c++) {
            if ((yield* self.get(c)) !== 0) {
              taken = true
              break
            }
          }
          if (taken) {
            offset = 0
            continue
          }
        }
        yield* self.update(offset, size, 1)
        self.freeByteOffset = (offset + size) % self.clusterSize === 0 ? 0 : offset + size
        return offset
      }
    })
  }

  /** Forgets the compressed packing position (after it was freed, e.g. on truncate). */
  resetBytePosition(): void {
    this.freeByteOffset = 0
  }

  /** Writes every dirty refcount block and flushes storage. */
  flushBlocks(): Effect.Effect<void, StorageError> {
    return this.cache.flush()
  }

  /** Drops one reference from every cluster touched by [offset, offset + length). */
  free(offset: number, length: number): Effect.Effect<void, Failure> {
    return this.update(offset, length, -1)
  }

  /** First run of `count` free clusters at or after `from`. */
  private findFree(from: number, count: number): Effect.Effect<number, Failure> {
    const self = this
    if (from >= this.endCluster) return Effect.succeed(Math.max(from, 1))
    return Effect.gen(function* () {
      let start = Math.max(from, 1)
      let run = 0
      for (let cluster = start; ; cluster++) {
        if (cluster >= self.endCluster && run === 0) return cluster
        if (cluster >= self.endCluster) return start
        const refcount = yield* self.get(cluster)
        if (refcount === 0) {
          if (run === 0) start = cluster
          run++
          if (run === count) return start
        } else {
          run = 0
          if (cluster === self.freeClusterHint) self.freeClusterHint = cluster + 1
        }
        if ((cluster + 1) * self.clusterSize > Limits.maxHostOffset) {
          return yield* new RefcountError({ reason: "NoSpace", message: "host offsets would exceed 2^56 bytes" })
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
        if (block < self.blockOffsets.length && self.blockOffsets[block] !== 0) continue
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
          const block = yield* self.cache.getEmpty(offset)
          writeRefcount(block, cluster - blockIndex * self.blockEntries, self.refcountOrder, 1)
          self.cache.markDirty(offset)
        } else {
          if (ownerBlock >= self.blockOffsets.length || self.blockOffsets[ownerBlock] === 0) {
            yield* self.ensureBlocks(cluster, 1)
            continue
          }
          yield* self.update(offset, self.clusterSize, 1)
          yield* self.cache.getEmpty(offset)
        }
        if (cluster >= self.endCluster) self.endCluster = cluster + 1
        // Rule 1: the block reaches storage before the table entry naming it.
        yield* self.cache.flush()
        writeRefcountTableEntry(self.tableBytes, blockIndex, offset)
        self.blockOffsets[blockIndex] = offset
        self.blockSet.add(offset)
        yield* self.storage.write(self.table.offset + blockIndex * 8, self.tableBytes.subarray(blockIndex * 8, blockIndex * 8 + 8))
        yield* self.storage.flush()
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
      // Write the new refcount blocks, each counting the area clusters it covers.
      const blockOffsetOf = new Map<number, number>()
      newBlocks.forEach((b, i) => blockOffsetOf.set(b, (areaStart + tableClusters + i) * self.clusterSize))
      const newTable = new Uint8Array(tableBytesLength)
      newTable.set(self.tableBytes.subarray(0, Math.min(self.tableBytes.length, tableBytesLength)))
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
        const blockOffset = self.blockOffsets[b]
        const block = yield* self.cache.get(blockOffset)
        writeRefcount(block, c - b * self.blockEntries, self.refcountOrder, 1)
        self.cache.markDirty(blockOffset)
      }
      yield* self.cache.flushTables()
      yield* self.storage.write(tableOffset, newTable)
      yield* self.storage.flush()
      const oldTable = self.table
      self.table = { offset: tableOffset, clusters: tableClusters }
      self.tableBytes = newTable
      self.blockOffsets = []
      for (let i = 0; i < tableBytesLength / 8; i++) self.blockOffsets.push(readRefcountTableEntry(newTable, i).offset)
      self.blockSet = new Set(self.blockOffsets.filter((o) => o !== 0))
      self.endCluster = Math.max(self.endCluster, areaStart + areaClusters)
      yield* self.commitTableLocation(self.table)
      yield* self.free(oldTable.offset, oldTable.clusters * self.clusterSize)
    })
  }
}
