import { Effect, Semaphore } from "effect"
import type { Scope } from "effect"
import { checkRange, checkSize, closedError, readOnlyError, StorageError } from "@qcow2/storage"
import type { BlockStorageShape, OpenOptions } from "@qcow2/storage"
import { CHUNKS, chunkRange, commit, FILES, openDatabase, request, type FileRecord } from "./database.js"
import { claimStore } from "./locks.js"

/** Default bytes per chunk record (see the package README for the measurement behind it). */
export const DEFAULT_CHUNK_SIZE = 256 * 1024

/** Clean chunks kept in memory after a read or a flush. */
const DEFAULT_CACHE_CHUNKS = 64

/** Where IndexedDB comes from: the browser's globals unless given (tests pass fake-indexeddb's). */
export interface IdbEnvironment {
  readonly indexedDB: IDBFactory
  readonly IDBKeyRange: typeof IDBKeyRange
}

export interface IdbStorageOptions extends OpenOptions {
  /** Bytes per chunk record for a new store (a power of two, 4 KiB to 16 MiB); existing stores keep theirs. */
  readonly chunkSize?: number
  /** Clean chunks cached in memory. */
  readonly cacheChunks?: number
  readonly environment?: IdbEnvironment
  /**
   * Commit unflushed writes when the store closes (default true, as closing
   * a file keeps its writes). False drops them, as a killed tab would.
   */
  readonly commitOnClose?: boolean
}

/** The browser's IndexedDB, or a clear error where there is none. */
export const defaultEnvironment = (location: string): Effect.Effect<IdbEnvironment, StorageError> => {
  const g = globalThis as { indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange }
  return g.indexedDB !== undefined && g.IDBKeyRange !== undefined
    ? Effect.succeed({ indexedDB: g.indexedDB, IDBKeyRange: g.IDBKeyRange })
    : Effect.fail(new StorageError({ reason: "Unsupported", message: `${location}: this runtime has no IndexedDB`, location }))
}

const isChunkSize = (n: number): boolean => Number.isSafeInteger(n) && n >= 4096 && n <= 16 * 1024 * 1024 && (n & (n - 1)) === 0

/**
 * A `BlockStorage` over IndexedDB: store `name` of database `database`,
 * sparse and chunked.
 *
 * Writes since the last flush stay in memory (`dirty`); `flush` commits all
 * of them, the size and any truncation in ONE read-write transaction, so the
 * database always holds the store exactly as of some completed flush: a
 * crash or a closed tab loses only unflushed writes and never leaves a torn
 * mix. A failed flush (a full quota: reason `NoSpace`) keeps the writes, so
 * nothing is lost and the flush can be retried. Closing the scope flushes.
 *
 * Invariant: bytes of a stored chunk at or past the store's size are zero,
 * so growing the store exposes zeros.
 */
export const openIdbStorage = (
  database: string,
  name: string,
  options: IdbStorageOptions
): Effect.Effect<BlockStorageShape, StorageError, Scope.Scope> =>
  Effect.gen(function* () {
    const location = `idb://${database}/${name}`
    const env = options.environment ?? (yield* defaultEnvironment(location))
    const chunkSizeOption = options.chunkSize ?? DEFAULT_CHUNK_SIZE
    if (!isChunkSize(chunkSizeOption)) {
      return yield* new StorageError({ reason: "OutOfRange", message: `${location}: chunk size ${chunkSizeOption} is not a power of two from 4 KiB to 16 MiB`, location })
    }
    yield* claimStore(env.indexedDB, location, options.readOnly)
    const db = yield* Effect.acquireRelease(openDatabase(env.indexedDB, database, location), (db) => Effect.sync(() => db.close()))
    const readFiles = () => db.transaction(FILES, "readonly").objectStore(FILES)
    let record = yield* request(location, "open", () => readFiles().get(name) as IDBRequest<FileRecord | undefined>)
    if (record === undefined && !options.create) {
      return yield* new StorageError({ reason: "NotFound", message: `open: ${location}: no such store`, location, errno: "ENOENT" })
    }
    if (record !== undefined && !isChunkSize(record.chunkSize)) {
      return yield* new StorageError({ reason: "Io", message: `open: ${location}: the store's record is damaged (chunk size ${record.chunkSize})`, location, errno: "EIO" })
    }
    const fresh = record === undefined || options.truncate === true
    if (fresh) {
      if (options.readOnly) return yield* readOnlyError(location, "create")
      const created: FileRecord = { size: 0, chunkSize: record?.chunkSize ?? chunkSizeOption }
      yield* commit(db, location, "create", (files, chunks) => {
        chunks.delete(chunkRange(env.IDBKeyRange, name, 0))
        files.put(created, name)
      })
      record = created
    }
    const store = new IdbStore(db, env, location, name, record!, options.readOnly || options.commitOnClose === false, options.readOnly, options.cacheChunks ?? DEFAULT_CACHE_CHUNKS)
    yield* Effect.addFinalizer(() => store.close())
    return store.shape()
  })

/** One open store: the single owner of its size, dirty chunks and cache. */
class IdbStore {
  private size: number
  private committedSize: number
  /** Chunks at or past this index are zeros unless dirty: a truncation not yet committed. */
  private zeroFrom = Number.POSITIVE_INFINITY
  /** Chunks written since the last flush; `null` = delete the chunk. */
  private readonly dirty = new Map<number, Uint8Array | null>()
  /** Clean chunks as committed, in least-recently-used order. */
  private readonly cache = new Map<number, Uint8Array>()
  private readonly lock = Semaphore.makeUnsafe(1)
  private readonly chunkSize: number
  private closed = false

  constructor(
    private readonly db: IDBDatabase,
    private readonly env: IdbEnvironment,
    private readonly location: string,
    private readonly name: string,
    record: FileRecord,
    private readonly dropOnClose: boolean,
    private readonly readOnly: boolean,
    private readonly cacheChunks: number
  ) {
    this.size = record.size
    this.committedSize = record.size
    this.chunkSize = record.chunkSize
  }

  shape(): BlockStorageShape {
    return {
      location: this.location,
      capabilities: { readOnly: this.readOnly, discard: true, alignment: 1 },
      read: (offset, into) => this.guarded("read", offset, into.length, false, () => this.read(offset, into)),
      write: (offset, data) => this.guarded("write", offset, data.length, true, () => this.write(offset, data)),
      discard: (offset, length) => this.guarded("discard", offset, length, true, () => this.discard(offset, length)),
      flush: () => this.guarded("flush", 0, 0, false, () => this.flush()),
      size: () => (this.closed ? Effect.fail(closedError(this.location, "size")) : Effect.sync(() => this.size)),
      resize: (size) => {
        const bad = checkSize(this.location, size)
        return bad !== undefined ? Effect.fail(bad) : this.guarded("resize", 0, 0, true, () => this.resize(size))
      },
      allocatedSize: () =>
        this.guarded("allocatedSize", 0, 0, false, () =>
          Effect.map(
            request(this.location, "allocatedSize", () =>
              this.db.transaction(CHUNKS, "readonly").objectStore(CHUNKS).count(chunkRange(this.env.IDBKeyRange, this.name, 0))
            ),
            (count) => count * this.chunkSize
          )
        )
    }
  }

  /** Argument, closed and read-only checks, then `run` under the store's lock. */
  private guarded<A>(operation: string, offset: number, length: number, writes: boolean, run: () => Effect.Effect<A, StorageError>) {
    const bad = checkRange(this.location, operation, offset, length)
    if (bad !== undefined) return Effect.fail(bad)
    if (this.closed) return Effect.fail(closedError(this.location, operation))
    if (writes && this.readOnly) return Effect.fail(readOnlyError(this.location, operation, offset, length))
    return this.lock.withPermits(1)(Effect.suspend(run))
  }

  /** Chunk `index` as the store holds it now (dirty, cached or committed); `undefined` = zeros. */
  private chunk(index: number): Effect.Effect<Uint8Array | undefined, StorageError> {
    const dirty = this.dirty.get(index)
    if (dirty !== undefined) return Effect.succeed(dirty ?? undefined)
    if (index >= this.zeroFrom) return Effect.succeed(undefined)
    const cached = this.cache.get(index)
    if (cached !== undefined) {
      this.cache.delete(index)
      this.cache.set(index, cached)
      return Effect.succeed(cached)
    }
    return Effect.map(
      request(this.location, "read", () => this.db.transaction(CHUNKS, "readonly").objectStore(CHUNKS).get([this.name, index]) as IDBRequest<Uint8Array | undefined>),
      (stored) => {
        if (stored === undefined) return undefined
        // A record of the wrong length is damage: use what fits, zeros for the rest.
        const bytes = stored.length === this.chunkSize ? stored : resized(stored, this.chunkSize)
        this.remember(index, bytes)
        return bytes
      }
    )
  }

  private remember(index: number, bytes: Uint8Array): void {
    this.cache.set(index, bytes)
    while (this.cache.size > this.cacheChunks) this.cache.delete(this.cache.keys().next().value!)
  }

  /** A private, writable copy of chunk `index`, marked dirty. */
  private ownChunk(index: number): Effect.Effect<Uint8Array, StorageError> {
    const dirty = this.dirty.get(index)
    if (dirty) return Effect.succeed(dirty)
    return Effect.map(this.chunk(index), (current) => {
      const copy = new Uint8Array(this.chunkSize)
      if (current !== undefined) copy.set(current)
      this.cache.delete(index)
      this.dirty.set(index, copy)
      return copy
    })
  }

  private read(offset: number, into: Uint8Array): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      const end = Math.min(offset + into.length, self.size)
      if (end < offset + into.length) into.fill(0, Math.max(0, end - offset))
      for (let pos = offset; pos < end; ) {
        const index = Math.floor(pos / self.chunkSize)
        const within = pos - index * self.chunkSize
        const n = Math.min(self.chunkSize - within, end - pos)
        const bytes = yield* self.chunk(index)
        if (bytes === undefined) into.fill(0, pos - offset, pos - offset + n)
        else into.set(bytes.subarray(within, within + n), pos - offset)
        pos += n
      }
    })
  }

  private write(offset: number, data: Uint8Array): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      for (let done = 0; done < data.length; ) {
        const pos = offset + done
        const index = Math.floor(pos / self.chunkSize)
        const within = pos - index * self.chunkSize
        const n = Math.min(self.chunkSize - within, data.length - done)
        // A whole-chunk write needs no read of the old content.
        const target = n === self.chunkSize ? self.replaceChunk(index) : yield* self.ownChunk(index)
        target.set(data.subarray(done, done + n), within)
        done += n
      }
      if (data.length > 0) self.size = Math.max(self.size, offset + data.length)
    })
  }

  private replaceChunk(index: number): Uint8Array {
    const fresh = this.dirty.get(index) ?? new Uint8Array(this.chunkSize)
    this.cache.delete(index)
    this.dirty.set(index, fresh)
    return fresh
  }

  /** Whole chunks are deleted, partial ones zeroed: discarded bytes read back as zeros. */
  private discard(offset: number, length: number): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      const end = Math.min(offset + length, self.size)
      for (let pos = offset; pos < end; ) {
        const index = Math.floor(pos / self.chunkSize)
        const within = pos - index * self.chunkSize
        const n = Math.min(self.chunkSize - within, end - pos)
        if (n === self.chunkSize) {
          self.cache.delete(index)
          self.dirty.set(index, null)
        } else {
          const bytes = yield* self.chunk(index)
          if (bytes !== undefined) (yield* self.ownChunk(index)).fill(0, within, within + n)
        }
        pos += n
      }
    })
  }

  private resize(size: number): Effect.Effect<void, StorageError> {
    const self = this
    return Effect.gen(function* () {
      if (size < self.size) {
        const keep = Math.ceil(size / self.chunkSize)
        const within = size - Math.floor(size / self.chunkSize) * self.chunkSize
        // The partial last chunk keeps its head; its tail becomes zeros (the invariant).
        if (within !== 0) {
          const last = keep - 1
          const bytes = yield* self.chunk(last)
          if (bytes !== undefined) (yield* self.ownChunk(last)).fill(0, within)
        }
        for (const index of [...self.dirty.keys()]) if (index >= keep) self.dirty.delete(index)
        for (const index of [...self.cache.keys()]) if (index >= keep) self.cache.delete(index)
        self.zeroFrom = Math.min(self.zeroFrom, keep)
      }
      self.size = size
    })
  }

  /** Commits dirty chunks, truncation and size in one transaction (see {@link openIdbStorage}). */
  private flush(): Effect.Effect<void, StorageError> {
    if (this.dirty.size === 0 && this.size === this.committedSize && this.zeroFrom === Number.POSITIVE_INFINITY) return Effect.void
    const writes = [...this.dirty]
    const zeroFrom = this.zeroFrom
    const record: FileRecord = { size: this.size, chunkSize: this.chunkSize }
    return Effect.map(
      commit(this.db, this.location, "flush", (files, chunks) => {
        if (zeroFrom !== Number.POSITIVE_INFINITY) chunks.delete(chunkRange(this.env.IDBKeyRange, this.name, zeroFrom))
        for (const [index, bytes] of writes) {
          if (bytes === null || isAllZero(bytes)) chunks.delete([this.name, index])
          else chunks.put(bytes, [this.name, index])
        }
        files.put(record, this.name)
      }),
      () => {
        // Requests wait for the lock the flush holds: nothing changed meanwhile.
        this.dirty.clear()
        for (const [index, bytes] of writes) if (bytes !== null && !isAllZero(bytes)) this.remember(index, bytes)
        this.zeroFrom = Number.POSITIVE_INFINITY
        this.committedSize = record.size
      }
    )
  }

  close(): Effect.Effect<void> {
    if (this.closed) return Effect.void
    return this.lock.withPermits(1)(
      Effect.suspend(() => (this.dropOnClose ? Effect.void : this.flush())).pipe(
        Effect.ignore,
        Effect.ensuring(
          Effect.sync(() => {
            this.closed = true
            this.cache.clear()
          })
        )
      )
    )
  }
}

const isAllZero = (bytes: Uint8Array): boolean => {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

const resized = (bytes: Uint8Array, length: number): Uint8Array => {
  const out = new Uint8Array(length)
  out.set(bytes.subarray(0, length))
  return out
}
