import { Data, Effect } from "effect"
import type { MetadataKind, OverlapIndex } from "@qcow2/format"
import { debugPoint, StorageError, type BlockStorageShape, type DebugEvent } from "@qcow2/storage"

/**
 * A table write-back refused because the table's cluster holds other
 * metadata (QEMU's pre-write overlap check): the image contradicts itself,
 * and the engine marks it corrupt (consistency rule 5).
 */
export class MetadataOverlapError extends Data.TaggedError("MetadataOverlapError")<{
  readonly message: string
  readonly offset: number
  readonly overlaps: MetadataKind
}> {}

/** Why a cache operation failed: the store failed, or a write-back was refused. */
export type TableCacheError = StorageError | MetadataOverlapError

/**
 * A fixed-capacity write-back cache of cluster-sized metadata tables (L2
 * tables or refcount blocks), keyed by host offset — the role of QEMU's
 * qcow2-cache.c, written from the ordering rules in DESIGN.md.
 *
 * - Hits are synchronous (`lookup`): a read whose table is cached pays no
 *   fiber, no generator step.
 * - Entries are evicted least-recently-used first. A dirty entry is written
 *   back before it is dropped.
 * - Flush ordering (DESIGN.md consistency rules 1–3): a cache may depend on
 *   another (`dependOn`); before any dirty entry of this cache is written,
 *   every dirty entry of the other cache is written and storage is flushed.
 *   `dependOnStorageFlush` asks for a storage flush barrier before the next
 *   write-back (guest data or copy-on-write data must be durable before the
 *   L2 entry that exposes it). A dependency that would make a cycle is
 *   resolved the way the rules require: the older dependency is flushed
 *   first, so a cycle can never be observed.
 * - Every write-back is checked against the image's metadata overlap index
 *   first (`overlaps`): a table never lands on other metadata.
 */
export interface TableCacheOptions {
  /** For messages: "L2" or "refcount block". */
  readonly name: string
  /** Bytes per table (the cluster size). */
  readonly tableSize: number
  /** Capacity in bytes; at least two tables are always kept. */
  readonly capacityBytes: number
  readonly storage: BlockStorageShape
  /**
   * The image's metadata overlap index and the kind of table this cache
   * holds: a write-back whose cluster holds any other metadata is refused
   * with MetadataOverlapError (QEMU's qcow2_pre_write_overlap_check).
   */
  readonly overlaps?: { readonly index: OverlapIndex; readonly kind: MetadataKind }
  /**
   * The debug events raised on the storage before a table is read from it
   * (`load`, on a miss) and before one is written back (`update`), as
   * QEMU's qcow2-cache.c raises l2_load, l2_update, refblock_update_part.
   */
  readonly events?: { readonly load?: DebugEvent; readonly update?: DebugEvent }
}

interface Entry {
  readonly offset: number
  readonly table: Uint8Array
  dirty: boolean
}

/** Counters for tests and benchmarks. */
export interface TableCacheStats {
  hits: number
  misses: number
  writes: number
  evictions: number
}

/** A cache of one kind of table (L2 tables or refcount blocks) of one image: LRU, write-back, flush dependencies and overlap checks, as described at `TableCacheOptions`. */
export class TableCache {
  readonly name: string
  readonly tableSize: number
  readonly capacity: number
  private readonly storage: BlockStorageShape
  private readonly overlaps: TableCacheOptions["overlaps"]
  private readonly events: NonNullable<TableCacheOptions["events"]>
  /** Map iteration order is the LRU order: first = least recently used. */
  private readonly entries = new Map<number, Entry>()
  private dependency: TableCache | undefined
  private needsStorageFlush = false
  private dirtyCount = 0
  readonly stats: TableCacheStats = { hits: 0, misses: 0, writes: 0, evictions: 0 }

  constructor(options: TableCacheOptions) {
    this.name = options.name
    this.tableSize = options.tableSize
    this.capacity = Math.max(2, Math.floor(options.capacityBytes / options.tableSize))
    this.storage = options.storage
    this.overlaps = options.overlaps
    this.events = options.events ?? {}
  }

  /** Number of tables held now. */
  get size(): number {
    return this.entries.size
  }

  get hasDirty(): boolean {
    return this.dirtyCount > 0
  }

  /** Whether a table at `offset` is cached (no LRU update). */
  has(offset: number): boolean {
    return this.entries.has(offset)
  }

  /** The cached table at `offset`, or undefined on a miss. Marks it most recently used. */
  lookup(offset: number): Uint8Array | undefined {
    const entry = this.entries.get(offset)
    if (entry === undefined) return undefined
    this.stats.hits++
    this.entries.delete(offset)
    this.entries.set(offset, entry)
    return entry.table
  }

  /** The table at `offset`, read from storage on a miss. */
  get(offset: number): Effect.Effect<Uint8Array, TableCacheError> {
    const hit = this.lookup(offset)
    if (hit !== undefined) return Effect.succeed(hit)
    return this.load(offset, true)
  }

  /**
   * A zero-filled table for a cluster just allocated at `offset`, without
   * reading it; it starts dirty so it reaches storage.
   */
  getEmpty(offset: number): Effect.Effect<Uint8Array, TableCacheError> {
    const existing = this.entries.get(offset)
    if (existing !== undefined) {
      existing.table.fill(0)
      this.markDirty(offset)
      return Effect.succeed(existing.table)
    }
    return this.load(offset, false).pipe(
      Effect.map((table) => {
        this.markDirty(offset)
        return table
      })
    )
  }

  /** Records that the table at `offset` was modified in memory. */
  markDirty(offset: number): void {
    const entry = this.entries.get(offset)
    if (entry === undefined) {
      throw new CacheInvariantError(`${this.name} table at ${offset} marked dirty but not cached`)
    }
    if (!entry.dirty) {
      entry.dirty = true
      this.dirtyCount++
    }
  }

  /**
   * Drops the table at `offset` without writing it (its cluster was freed).
   * Pending writes of a freed table must not land on a reused cluster.
   */
  invalidate(offset: number): void {
    const entry = this.entries.get(offset)
    if (entry === undefined) return
    if (entry.dirty) this.dirtyCount--
    this.entries.delete(offset)
  }

  /** Drops every clean table (e.g. after an external change of the image). */
  dropClean(): void {
    for (const [offset, entry] of this.entries) if (!entry.dirty) this.entries.delete(offset)
  }

  /**
   * Makes this cache's write-backs wait for `other`: before any dirty table
   * here is written, every dirty table of `other` is written and storage is
   * flushed. Used with `this` = L2 cache, `other` = refcount cache when
   * clusters are allocated (rule 1), and the reverse when they are freed
   * (rule 3). Returns an Effect because resolving an opposite dependency
   * flushes first.
   */
  dependOn(other: TableCache): Effect.Effect<void, TableCacheError> {
    if (other === this) return Effect.die(new CacheInvariantError(`${this.name} cache cannot depend on itself`))
    if (this.dependency === other) return Effect.void
    const self = this
    return Effect.gen(function* () {
      // `other` waiting on something (possibly us): settle that first so the
      // graph never holds a cycle.
      if (other.dependency !== undefined) yield* other.flushTables()
      if (self.dependency !== undefined) yield* self.flushTables()
      self.dependency = other
    })
  }

  /** Whether this cache already waits for `other` (`dependOn(other)` would do nothing). */
  waitsFor(other: TableCache): boolean {
    return this.dependency === other
  }

  /** Whether `dependOn(other)` needs no flush: this cache waits for `other` already, or neither waits for anything. */
  canDependNow(other: TableCache): boolean {
    return this.dependency === other || (other !== this && this.dependency === undefined && other.dependency === undefined)
  }

  /** `dependOn(other)` without an Effect, where `canDependNow(other)` holds (an allocation made in plain code declares rule 1 with it). */
  dependOnNow(other: TableCache): void {
    if (!this.canDependNow(other)) throw new CacheInvariantError(`${this.name} cache cannot wait for the ${other.name} cache without a flush`)
    this.dependency = other
  }

  /** Next write-back of this cache is preceded by a storage flush (rule 2). */
  dependOnStorageFlush(): void {
    this.needsStorageFlush = true
  }

  /** Writes every dirty table (dependencies first) without a final storage flush. */
  flushTables(): Effect.Effect<void, TableCacheError> {
    if (this.dirtyCount === 0 && this.dependency === undefined) {
      this.needsStorageFlush = false
      return Effect.void
    }
    const self = this
    return Effect.gen(function* () {
      yield* self.settleDependencies()
      const dirty: Entry[] = []
      for (const entry of self.entries.values()) if (entry.dirty) dirty.push(entry)
      dirty.sort((a, b) => a.offset - b.offset)
      for (const entry of dirty) yield* self.writeEntry(entry)
    })
  }

  /** Writes every dirty table, then flushes storage: everything cached is durable. */
  flush(): Effect.Effect<void, TableCacheError> {
    return Effect.andThen(this.flushTables(), this.storage.flush())
  }

  /**
   * Before this cache writes anything: every table of the cache it depends
   * on is written and storage is flushed — even when that cache holds
   * nothing dirty now, its tables may have been written since the last
   * flush (QEMU's qcow2_cache_flush_dependency flushes unconditionally).
   */
  private settleDependencies(): Effect.Effect<void, TableCacheError> {
    const self = this
    return Effect.gen(function* () {
      const dependency = self.dependency
      if (dependency !== undefined) {
        yield* dependency.flushTables()
        yield* self.storage.flush()
        self.needsStorageFlush = false
        self.dependency = undefined
      }
      if (self.needsStorageFlush) {
        yield* self.storage.flush()
        self.needsStorageFlush = false
      }
    })
  }

  private writeEntry(entry: Entry): Effect.Effect<void, TableCacheError> {
    const self = this
    return Effect.gen(function* () {
      if (!entry.dirty) return
      if (self.overlaps !== undefined) {
        const refusal = self.overlaps.index.inactiveL2Refusal
        if (refusal !== undefined) {
          return yield* new StorageError({ reason: "Io", message: `${refusal.message}: ${self.name} table at host offset ${entry.offset} not written`, offset: entry.offset, errno: refusal.errno })
        }
        const hit = self.overlaps.index.find(entry.offset, self.tableSize, [self.overlaps.kind])
        if (hit !== undefined) {
          return yield* new MetadataOverlapError({
            // QEMU's qcow2_pre_write_overlap_check words it so; the offset is the error's.
            message: `Preventing invalid write on metadata (overlaps with ${hit})`,
            offset: entry.offset,
            overlaps: hit
          })
        }
      }
      // Cleared before the write so a concurrent modification re-dirties it.
      entry.dirty = false
      self.dirtyCount--
      if (self.events.update !== undefined) yield* debugPoint(self.storage, self.events.update)
      const written = yield* Effect.exit(self.storage.write(entry.offset, entry.table))
      if (written._tag === "Failure") {
        if (!entry.dirty && self.entries.get(entry.offset) === entry) {
          entry.dirty = true
          self.dirtyCount++
        }
        return yield* written
      }
      self.stats.writes++
    })
  }

  private load(offset: number, read: boolean): Effect.Effect<Uint8Array, TableCacheError> {
    const self = this
    return Effect.gen(function* () {
      yield* self.makeRoom()
      // A concurrent load may have filled it while we were evicting.
      const raced = self.entries.get(offset)
      if (raced !== undefined) return raced.table
      const table = new Uint8Array(self.tableSize)
      if (read) {
        self.stats.misses++
        if (self.events.load !== undefined) yield* debugPoint(self.storage, self.events.load)
        yield* self.storage.read(offset, table)
        const again = self.entries.get(offset)
        if (again !== undefined) return again.table
      }
      self.entries.set(offset, { offset, table, dirty: false })
      return table
    })
  }

  /** Evicts least recently used tables until one more fits. */
  private makeRoom(): Effect.Effect<void, TableCacheError> {
    if (this.entries.size < this.capacity) return Effect.void
    const self = this
    return Effect.gen(function* () {
      while (self.entries.size >= self.capacity) {
        const victim: Entry | undefined = self.entries.values().next().value
        if (victim === undefined) return
        if (victim.dirty) {
          yield* self.settleDependencies()
          yield* self.writeEntry(victim)
          // Re-check: it may have been used (and dirtied) during the write.
          if (victim.dirty || self.entries.get(victim.offset) !== victim) continue
        }
        self.entries.delete(victim.offset)
        self.stats.evictions++
      }
    })
  }
}

/** A bug in the caller's use of the cache (not an image problem). */
export class CacheInvariantError extends Error {
  readonly _tag = "CacheInvariantError"
}
