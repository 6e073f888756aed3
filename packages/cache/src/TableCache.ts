import { Effect } from "effect"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"

/**
 * A fixed-capacity write-back cache of cluster-sized metadata tables (L2
 * tables or refcount blocks), keyed by host offset — the role of QEMU's
 * qcow2-cache.c, written from the ordering rules in DESIGN.md.
 *
 * - Hits are synchronous (`lookup`): a read whose table is cached pays no
 *   fiber, no generator step.
 * - Entries are evicted least-recently-used first. A dirty entry is written
 *   back before it is dropped. Pinned entries (`pin`/`unpin`, or `use`) are
 *   never evicted, so a table held across an await stays valid; the capacity
 *   is a target that pinned entries may exceed briefly.
 * - Flush ordering (DESIGN.md consistency rules 1–3): a cache may depend on
 *   another (`dependOn`); before any dirty entry of this cache is written,
 *   every dirty entry of the other cache is written and storage is flushed.
 *   `dependOnStorageFlush` asks for a storage flush barrier before the next
 *   write-back (guest data or copy-on-write data must be durable before the
 *   L2 entry that exposes it). A dependency that would make a cycle is
 *   resolved the way the rules require: the older dependency is flushed
 *   first, so a cycle can never be observed.
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
   * Called before a table is written back; may fail to veto the write (the
   * driver's metadata overlap check). Defaults to allowing every write.
   */
  readonly beforeWrite?: (offset: number, table: Uint8Array) => Effect.Effect<void, StorageError>
}

interface Entry {
  readonly offset: number
  readonly table: Uint8Array
  dirty: boolean
  pins: number
}

/** Counters for tests and benchmarks. */
export interface TableCacheStats {
  hits: number
  misses: number
  writes: number
  evictions: number
}

export class TableCache {
  readonly name: string
  readonly tableSize: number
  readonly capacity: number
  private readonly storage: BlockStorageShape
  private readonly beforeWrite: TableCacheOptions["beforeWrite"]
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
    this.beforeWrite = options.beforeWrite
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
  get(offset: number): Effect.Effect<Uint8Array, StorageError> {
    const hit = this.lookup(offset)
    if (hit !== undefined) return Effect.succeed(hit)
    return this.load(offset, true)
  }

  /**
   * A zero-filled table for a cluster just allocated at `offset`, without
   * reading it; it starts dirty so it reaches storage.
   */
  getEmpty(offset: number): Effect.Effect<Uint8Array, StorageError> {
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

  pin(offset: number): void {
    const entry = this.entries.get(offset)
    if (entry !== undefined) entry.pins++
  }

  unpin(offset: number): void {
    const entry = this.entries.get(offset)
    if (entry !== undefined && entry.pins > 0) entry.pins--
  }

  /** Runs `f` with the table at `offset` pinned (not evictable) for its duration. */
  use<A, E, R>(offset: number, f: (table: Uint8Array) => Effect.Effect<A, E, R>): Effect.Effect<A, E | StorageError, R> {
    return Effect.acquireUseRelease(
      Effect.tap(this.get(offset), () => Effect.sync(() => this.pin(offset))),
      f,
      () => Effect.sync(() => this.unpin(offset))
    )
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
    for (const [offset, entry] of this.entries) if (!entry.dirty && entry.pins === 0) this.entries.delete(offset)
  }

  /**
   * Makes this cache's write-backs wait for `other`: before any dirty table
   * here is written, every dirty table of `other` is written and storage is
   * flushed. Used with `this` = L2 cache, `other` = refcount cache when
   * clusters are allocated (rule 1), and the reverse when they are freed
   * (rule 3). Returns an Effect because resolving an opposite dependency
   * flushes first.
   */
  dependOn(other: TableCache): Effect.Effect<void, StorageError> {
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

  /** Next write-back of this cache is preceded by a storage flush (rule 2). */
  dependOnStorageFlush(): void {
    this.needsStorageFlush = true
  }

  /** Writes every dirty table (dependencies first) without a final storage flush. */
  flushTables(): Effect.Effect<void, StorageError> {
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
  flush(): Effect.Effect<void, StorageError> {
    return Effect.andThen(this.flushTables(), this.storage.flush())
  }

  private settleDependencies(): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      const dependency = self.dependency
      if (dependency !== undefined) {
        if (dependency.hasDirty || dependency.dependency !== undefined) {
          yield* dependency.flushTables()
          yield* self.storage.flush()
          self.needsStorageFlush = false
        }
        self.dependency = undefined
      }
      if (self.needsStorageFlush) {
        yield* self.storage.flush()
        self.needsStorageFlush = false
      }
    })
  }

  private writeEntry(entry: Entry): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      if (!entry.dirty) return
      if (self.beforeWrite !== undefined) yield* self.beforeWrite(entry.offset, entry.table)
      // Cleared before the write so a concurrent modification re-dirties it.
      entry.dirty = false
      self.dirtyCount--
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

  private load(offset: number, read: boolean): Effect.Effect<Uint8Array, StorageError> {
    const self = this
    return Effect.gen(function* () {
      yield* self.makeRoom()
      // A concurrent load may have filled it while we were evicting.
      const raced = self.entries.get(offset)
      if (raced !== undefined) return raced.table
      const table = new Uint8Array(self.tableSize)
      if (read) {
        self.stats.misses++
        yield* self.storage.read(offset, table)
        const again = self.entries.get(offset)
        if (again !== undefined) return again.table
      }
      self.entries.set(offset, { offset, table, dirty: false, pins: 0 })
      return table
    })
  }

  /** Evicts least recently used unpinned tables until one more fits. */
  private makeRoom(): Effect.Effect<void, StorageError> {
    if (this.entries.size < this.capacity) return Effect.void
    const self = this
    return Effect.gen(function* () {
      while (self.entries.size >= self.capacity) {
        let victim: Entry | undefined
        for (const entry of self.entries.values()) {
          if (entry.pins === 0) {
            victim = entry
            break
          }
        }
        if (victim === undefined) return
        if (victim.dirty) {
          yield* self.settleDependencies()
          yield* self.writeEntry(victim)
          // Re-check: it may have been used (and dirtied) during the write.
          if (victim.dirty || victim.pins > 0 || self.entries.get(victim.offset) !== victim) continue
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
