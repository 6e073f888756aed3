/**
 * The engine's one owner of an open image's state. Longer than most
 * modules on purpose: each public request is here only as its entry point
 * (range checks, the metadata lock, draining direct writes, the corrupt
 * flag), delegating the work to the modules beside it, so that who may
 * change what, and under which lock, reads in one place.
 */
import { Deferred, Effect, Semaphore } from "effect"
import { Refcounts } from "@qcow2/alloc"
import { TableCache } from "@qcow2/cache"
import type { CompressionError, DecompressionError } from "@qcow2/compress"
import { AutoclearFeature, decodeImageHeader, decodeSnapshotTable, encodeImageHeader, IncompatibleFeature, l1EntriesFor, Limits, makeGeometry } from "@qcow2/format"
import type { Geometry, ImageHeader, SnapshotEntry } from "@qcow2/format"
import { debugPoint, writeNowOf, type BlockStorageShape, type WriteNow } from "@qcow2/storage"
import { DirtyBitmaps } from "./bitmaps.js"
import type { LoadedBitmaps } from "./bitmaps-disk.js"
import { writeCompressedClusters } from "./compressed.js"
import { discardClusters, dropClusters } from "./discard.js"
import { canEmptyCompletely, emptyCompletely } from "./make-empty.js"
import { asImageError, checkRange, ClusterError, ImageError, isStructuralDamage, toImageError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { HeaderState } from "./header.js"
import { directWriteHost, readMapped } from "./fastpath.js"
import { MetadataLock } from "./lock.js"
import { InFlightAllocations } from "./inflight.js"
import { CompressedReadBuffers } from "./mapping.js"
import { Integrity } from "./integrity.js"
import { ActiveL1 } from "./l1.js"
import { DecompressedCluster, readGuest } from "./read.js"
import { applySnapshot, createSnapshot, deleteSnapshot, loadSnapshot, snapshotForApply } from "./snapshot.js"
import type { SnapshotTime } from "./snapshot.js"
import { SnapshotTable } from "./snapshot-table.js"
import { blockStatus, PreallocationProbe } from "./status.js"
import type { BlockStatus } from "./status.js"
import { truncateImage } from "./truncate.js"
import type { Preallocation } from "./truncate.js"
import { writeBytes } from "./write.js"
import { writeZeroes } from "./zero.js"

/** The layer below (the backing file), as the engine reads it: guest bytes and their status. */
export interface BackingLayer {
  readonly size: number
  /** Reads guest bytes of the backing layer. */
  readonly read: (offset: number, into: Uint8Array) => Effect.Effect<void, ImageError>
  /** Allocation status of the backing layer at `offset` (for block status and `qemu-img map` depth). */
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<BlockStatus, ImageError>
}

/** Compression of the image's clusters, with its compression type already chosen. */
export interface ClusterCompression {
  /** Decompresses one compressed cluster into `out` (exactly one cluster). */
  readonly decompress: (input: Uint8Array, out: Uint8Array) => Effect.Effect<void, DecompressionError>
  /** Compresses one cluster; undefined when it does not get smaller. */
  readonly compress: (input: Uint8Array) => Effect.Effect<Uint8Array | undefined, CompressionError>
  /**
   * Compresses whole clusters of `clusterSize` bytes at once (e.g. one
   * message to a worker pool, CompressionPool.compressClusters) and runs
   * `use` on the results in order (undefined: did not get smaller), which
   * are valid until `use` settles. Without it, `compress` runs per cluster.
   */
  readonly compressClusters?: <A, E, R>(
    data: Uint8Array,
    clusterSize: number,
    use: (results: ReadonlyArray<Uint8Array | undefined>) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | CompressionError, R>
}

/** Encrypts or decrypts whole 512-byte sectors in place; `offset` selects the IV. */
export interface SectorCrypto {
  /** Encrypts `data` (whole sectors) in place; `offset` is the byte offset its IV is derived from (see `ivFrom`). */
  readonly encrypt: (offset: number, data: Uint8Array) => void
  /** Decrypts `data` (whole sectors) in place; `offset` as for `encrypt`. */
  readonly decrypt: (offset: number, data: Uint8Array) => void
  /** Whether the IV follows the guest offset (legacy AES) or the host offset (LUKS). */
  readonly ivFrom: "guest" | "host"
}

/** What the engine is built from: the validated header and tables read by the opener. */
export interface EngineOptions {
  /** The qcow2 file. */
  readonly storage: BlockStorageShape
  /** The external data file, when the image has one. */
  readonly dataFile: BlockStorageShape | undefined
  readonly header: ImageHeader
  readonly readOnly: boolean
  /** The active L1 table as read (at least l1_size entries). */
  readonly l1Table: Uint8Array
  /** The refcount table as read (refcount_table_clusters clusters). */
  readonly refcountTable: Uint8Array
  readonly fileSize: number
  readonly snapshots: ReadonlyArray<SnapshotEntry>
  readonly backing: BackingLayer | undefined
  readonly compression: ClusterCompression
  /** The unlocked cipher of an encrypted image; undefined when not encrypted or locked. */
  readonly crypto: SectorCrypto | undefined
  readonly l2CacheBytes: number
  readonly refcountCacheBytes: number
  /** The persistent bitmaps as the opener loaded them (`loadBitmaps`); none when absent. */
  readonly bitmaps?: LoadedBitmaps
  /** Where the driver's own messages go (corruption events, as QEMU prints them); none when absent. */
  readonly report?: (line: string) => void
  /** Lazy refcounts whatever the header's compatible bit says (QEMU's lazy-refcounts option). */
  readonly lazyRefcounts?: boolean
  /** QEMU's overlap-check.inactive-l2: snapshot L1 tables are validated before every write (OverlapIndex). */
  readonly checksInactiveL2?: boolean
}

/** A metadata cache that could not be written back at close; QEMU's message names it ("Failed to flush the L2 table cache"). */
export interface CacheFlushFailure {
  readonly cache: "L2 table" | "refcount block"
  readonly error: ImageError
}

/** Options of `truncate` (qemu-img resize: `--shrink`, `--preallocation`). */
export interface TruncateOptions {
  readonly shrink?: boolean
  readonly preallocation?: Preallocation
}

/**
 * One open qcow2 image: the only owner of its header state, L1 table,
 * L2 and refcount caches, refcounts, metadata lock, in-flight allocations,
 * corrupt and dirty flags, and metadata overlap index.
 *
 * Each public method is one request: one Effect, arguments checked here,
 * plain loops inside, failures presented as ImageError. A structural
 * problem met on the way marks the image corrupt (rule 5). Which module
 * holds which consistency rule: see the package README.
 */
export class Qcow2Engine {
  readonly location: string
  /** The qcow2 file: metadata, and data unless there is an external data file. */
  readonly storage: BlockStorageShape
  /** Where data clusters live: `storage`, or the external data file. */
  readonly data: BlockStorageShape
  /** `data`'s synchronous write, when it has one (see the request fast path, `write`). */
  private readonly dataWriteNow: WriteNow | undefined
  readonly externalData: boolean
  readonly geometry: Geometry
  readonly version: 2 | 3
  readonly header: HeaderState
  readonly integrity: Integrity
  readonly l1: ActiveL1
  readonly snapshots: SnapshotTable
  readonly l2Cache: TableCache
  readonly refcounts: Refcounts
  /** Metadata lock (QEMU's s->lock): one holder changes L1/L2/refcounts at a time. */
  readonly lock = new MetadataLock()
  /** Serialises read-modify-write of partial sectors of encrypted images. */
  readonly sectorLock = Semaphore.makeUnsafe(1)
  readonly inflight = new InFlightAllocations()
  readonly decompressed = new DecompressedCluster()
  readonly compressedReads = new CompressedReadBuffers()
  readonly preallocation = new PreallocationProbe()
  readonly backing: BackingLayer | undefined
  readonly codec: ClusterCompression
  readonly crypto: SectorCrypto | undefined
  /** Persistent dirty bitmaps: marked by every write path, stored on close. */
  readonly bitmaps: DirtyBitmaps
  /** Where the driver's own messages go (EngineOptions.report); nowhere when absent. */
  readonly report: (line: string) => void
  /** Set by `close`: everything was written back once; nothing more is. */
  private closed = false

  constructor(options: EngineOptions) {
    const image = options.header
    const h = image.header
    const storage = options.storage
    this.location = storage.location
    this.report = options.report ?? (() => {})
    this.storage = storage
    this.data = options.dataFile ?? storage
    this.dataWriteNow = writeNowOf(this.data)
    this.externalData = (h.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n
    this.geometry = makeGeometry(h.clusterBits, (h.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n, h.refcountOrder)
    this.version = h.version
    this.backing = options.backing
    this.codec = options.compression
    this.crypto = options.crypto
    const cs = this.geometry.clusterSize
    this.header = new HeaderState(storage, image)
    this.integrity = new Integrity(this.header, options.readOnly, this.location, options.report, options.lazyRefcounts, options.checksInactiveL2)
    const overlaps = this.integrity.overlaps
    this.snapshots = new SnapshotTable(options.snapshots, h.snapshotsOffset, Math.floor(h.size / 512) * 512, overlaps)
    const bitmaps = image.extensions.bitmaps
    overlaps.setRanges("bitmap directory", bitmaps !== undefined ? [{ offset: bitmaps.directoryOffset, length: bitmaps.directorySize }] : [])
    this.l1 = new ActiveL1(storage, this.header, this.integrity, cs, options.l1Table)
    this.l2Cache = new TableCache({ name: "L2", tableSize: cs, capacityBytes: options.l2CacheBytes, storage, overlaps: { index: overlaps, kind: "active L2 table" }, events: { load: "l2_load", update: "l2_update" } })
    this.refcounts = new Refcounts({
      storage,
      clusterBits: h.clusterBits,
      refcountOrder: h.refcountOrder,
      table: { offset: h.refcountTableOffset, clusters: h.refcountTableClusters },
      tableBytes: options.refcountTable,
      blockCache: new TableCache({
        name: "refcount block",
        tableSize: cs,
        capacityBytes: options.refcountCacheBytes,
        storage,
        overlaps: { index: overlaps, kind: "refcount block" },
        events: { update: "refblock_update_part" }
      }),
      mappingCache: this.l2Cache,
      fileSize: options.fileSize,
      header: { moveRefcountTable: (table) => this.header.update({ refcountTableOffset: table.offset, refcountTableClusters: table.clusters }) },
      lazy: this.integrity.lazyRefcounts,
      overlaps
    })
    this.bitmaps = new DirtyBitmaps(
      {
        storage,
        header: this.header,
        integrity: this.integrity,
        refcounts: this.refcounts,
        clusterSize: cs,
        readOnly: options.readOnly,
        version: h.version,
        location: this.location,
        lock: this.lock,
        change: (effect) => this.change(effect)
      },
      options.bitmaps ?? { directory: [], bitmaps: [], image },
      this.header.size
    )
  }

  get virtualSize(): number {
    return this.header.size
  }

  /**
   * Reads guest bytes (any alignment), falling through to the backing file
   * where this layer has nothing. Mapped from cached tables without the
   * Effect machinery when it can be (fastpath.ts), when the request runs.
   */
  read(offset: number, into: Uint8Array): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.checkRange(offset, into.length) ?? this.requireKey()
    if (bad) return Effect.fail(bad)
    return Effect.suspend(() => {
      const mapped = readMapped(this, offset, into)
      return mapped !== undefined ? Effect.mapError(mapped, this.storageFailure) : this.run(readGuest(this, offset, into))
    })
  }

  /**
   * Writes guest bytes (any alignment); allocating writes copy the untouched
   * parts of their clusters. A write into clusters the image owns goes
   * straight to storage without the metadata lock when fastpath.ts can
   * map it: at once where the store can write at once (`writeNow`), else
   * counted as a direct write in flight (see InFlightAllocations).
   * `placed` is completed once the host clusters of the whole write are
   * decided (see writeBytes).
   */
  write(offset: number, data: Uint8Array, placed?: Deferred.Deferred<void>): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable() ?? this.requireKey() ?? this.checkRange(offset, data.length)
    if (bad) return Effect.fail(bad)
    if (data.length === 0) return Effect.void
    this.bitmaps.mark(offset, data.length)
    return Effect.suspend(() => this.writeNow(offset, data, placed) ?? this.writeLater(offset, data, placed))
  }

  /**
   * A write into clusters the image owns, placed and written in one
   * synchronous stretch when the data store can write at once
   * (`BlockStorageShape.writeNow`): nothing else runs in between, so it
   * needs no count as a direct write in flight. Undefined when it cannot
   * (nothing written).
   */
  private writeNow(offset: number, data: Uint8Array, placed: Deferred.Deferred<void> | undefined): Effect.Effect<void, ImageError> | undefined {
    const writeNow = this.dataWriteNow
    if (writeNow === undefined) return undefined
    const host = directWriteHost(this, offset, data.length)
    if (host === undefined) return undefined
    const written = writeNow(host, data)
    if (written === false) return undefined
    if (placed !== undefined) Deferred.doneUnsafe(placed, Effect.void)
    return written === true ? Effect.void : Effect.fail(this.storageFailure(written))
  }

  private writeLater(offset: number, data: Uint8Array, placed: Deferred.Deferred<void> | undefined): Effect.Effect<void, ImageError> {
    return Effect.acquireUseRelease(
      Effect.sync(() => {
        const host = directWriteHost(this, offset, data.length)
        if (host !== undefined) {
          this.inflight.beginDirect()
          if (placed !== undefined) Deferred.doneUnsafe(placed, Effect.void)
        }
        return host
      }),
      (host) => (host === undefined ? this.change(writeBytes(this, offset, data, placed)) : Effect.mapError(this.data.write(host, data), this.storageFailure)),
      (host) => (host === undefined ? Effect.void : Effect.sync(() => this.inflight.endDirect()))
    )
  }

  private readonly storageFailure = (error: EngineFailure): ImageError => toImageError(error, this.location)

  /** Writes zeros; `unmap` lets whole clusters be deallocated (qemu-io `write -z -u`). */
  writeZeroes(offset: number, length: number, unmap = false): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable() ?? this.requireKey() ?? this.checkRange(offset, length)
    if (bad) return Effect.fail(bad)
    if (length === 0) return Effect.void
    this.bitmaps.mark(offset, length)
    return this.inflight.excludingDirect(this.change(writeZeroes(this, offset, length, unmap)))
  }

  /**
   * Discards whole clusters inside [offset, offset + length) (and a partial
   * last cluster at the image end), as QEMU does. On v2 over a backing file
   * dropping clusters would expose the backing data, so QEMU refuses the
   * discard and ignores the refusal.
   */
  discard(offset: number, length: number): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable() ?? this.checkRange(offset, length)
    if (bad) return Effect.fail(bad)
    this.bitmaps.mark(offset, length)
    if (this.version < 3 && this.backing !== undefined) return Effect.void
    const cs = this.geometry.clusterSize
    const first = Math.ceil(offset / cs) * cs
    const end = offset + length
    const last = end === this.virtualSize ? end : Math.floor(end / cs) * cs
    if (first >= last) return Effect.void
    const whole = this.inflight.excludingDirect(this.change(discardClusters(this, first, last - first)))
    if (last === end) return whole
    // QEMU's block layer passes the partial tail on as a request of its own, refused once a corruption event took the image away.
    return Effect.andThen(
      whole,
      Effect.suspend(() => {
        const ejected = this.requireMedium()
        return ejected !== undefined ? Effect.fail(ejected) : Effect.void
      })
    )
  }

  /** Writes whole aligned clusters compressed (qemu-io `write -c`). */
  writeCompressed(offset: number, data: Uint8Array): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable() ?? this.requireKey() ?? this.checkRange(offset, data.length)
    if (bad) return Effect.fail(bad)
    if (this.header.header.cryptMethod !== 0) {
      return Effect.fail(new ImageError({ reason: "Unsupported", message: "Compression is not supported with encryption", location: this.location }))
    }
    this.bitmaps.mark(offset, data.length)
    return this.inflight.excludingDirect(this.change(writeCompressedClusters(this, offset, data)))
  }

  /** Grows (or with `shrink`, shrinks) the virtual size, preallocating a grown area as asked. */
  truncate(size: number, options: TruncateOptions = {}): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable()
    if (bad) return Effect.fail(bad)
    if (!Number.isSafeInteger(size) || size < 0) return Effect.fail(this.invalid(`invalid size ${size}`))
    if (size < this.virtualSize && !options.shrink) return Effect.fail(this.invalid("Use the --shrink option to perform a shrink operation."))
    if (size % 512 !== 0) return Effect.fail(this.invalid("The new size must be a multiple of 512"))
    const bitmapsRefuse = this.bitmaps.refuseResize()
    if (bitmapsRefuse !== undefined) return Effect.fail(bitmapsRefuse)
    return Effect.tap(this.inflight.excludingDirect(this.change(truncateImage(this, size, options.preallocation ?? "off"))), () =>
      Effect.sync(() => this.bitmaps.resize(this.virtualSize))
    )
  }

  /**
   * Where the VM state area starts (QEMU's qcow2_vm_state_offset): the
   * guest offset past what the L1 entries of the virtual size map. VM
   * state is stored there like guest data, in clusters the L1 table grows
   * to map (qemu-io `read -b` / `write -b`, bdrv_load/save_vmstate).
   */
  get vmStateOffset(): number {
    return l1EntriesFor(this.virtualSize, this.geometry) * 2 ** (this.geometry.clusterBits + this.geometry.l2Bits)
  }

  /** Reads VM state bytes [pos, pos + into.length) of the area at vmStateOffset. */
  readVmState(pos: number, into: Uint8Array): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.checkVmStateRange(pos, into.length) ?? this.requireKey()
    const start = this.vmStateOffset + pos
    return bad ? Effect.fail(bad) : this.run(Effect.andThen(debugPoint(this.storage, "vmstate_load"), readGuest(this, start, into, start + into.length)))
  }

  /** Writes VM state bytes at `pos` of the area at vmStateOffset, growing the L1 table as needed. */
  writeVmState(pos: number, data: Uint8Array): Effect.Effect<void, ImageError> {
    const bad = this.requireMedium() ?? this.requireWritable() ?? this.requireKey() ?? this.checkVmStateRange(pos, data.length)
    if (bad) return Effect.fail(bad)
    if (data.length === 0) return Effect.void
    return this.change(Effect.andThen(debugPoint(this.storage, "vmstate_save"), writeBytes(this, this.vmStateOffset + pos, data)))
  }

  private checkVmStateRange(pos: number, length: number): ImageError | undefined {
    if (Number.isSafeInteger(pos) && pos >= 0 && Number.isSafeInteger(this.vmStateOffset + pos + length)) return undefined
    return this.invalid(`VM state range ${pos}+${length} is out of range`)
  }

  /** Status of the extent at `offset`, at most `length` bytes; adjacent clusters with equal status merge. */
  blockStatus(offset: number, length: number): Effect.Effect<BlockStatus, ImageError> {
    const bad = this.requireMedium() ?? this.checkRange(offset, length)
    return bad ? Effect.fail(bad) : this.run(blockStatus(this, offset, length))
  }

  /** Makes everything written so far durable. */
  flush(): Effect.Effect<void, ImageError> {
    return this.run(this.flushMetadata())
  }

  /**
   * Writes every cached table in the one order the rules allow (each cache
   * settles what it depends on first), then flushes the data file and the
   * image file.
   */
  flushMetadata(): Effect.Effect<void, EngineFailure> {
    const self = this
    // Once damage is found, no metadata is written any more (QEMU makes the
    // image unusable): what the caches hold may be built on the damage.
    if (this.integrity.isCorrupt) return Effect.andThen(this.data === this.storage ? Effect.void : this.data.flush(), this.storage.flush())
    return Effect.gen(function* () {
      yield* self.l2Cache.flushTables()
      if (self.integrity.needsAccurateRefcounts) {
        yield* self.refcounts.cache.flushTables()
        yield* self.l2Cache.flushTables()
      }
      if (self.data !== self.storage) yield* self.data.flush()
      yield* self.storage.flush()
    })
  }

  /**
   * Runs `repair` (which rewrites metadata on the file behind the engine)
   * with the metadata lock held and everything flushed, then starts over
   * from what is on disk. When `consistent` says the result left no
   * corruption, the dirty and corrupt bits are cleared (QEMU's
   * qcow2_mark_clean + qcow2_mark_consistent after a repair).
   */
  repair<A>(repair: Effect.Effect<A, ImageError>, consistent: (result: A) => boolean): Effect.Effect<A, ImageError> {
    const self = this
    return this.inflight.excludingDirect(this.inflight.withLockDrained(
      this.lock,
      Effect.gen(function* () {
        yield* self.flush()
        const result = yield* repair
        yield* self.reload()
        if (consistent(result)) yield* asImageError(self.integrity.repaired(), self.location)
        return result
      })
    ))
  }

  /** Re-reads the header, refcount table and active L1 table from disk; the caches must hold nothing dirty. */
  private reload(): Effect.Effect<void, ImageError> {
    const self = this
    return asImageError(
      Effect.gen(function* () {
        const cs = self.geometry.clusterSize
        self.l2Cache.dropClean()
        self.refcounts.cache.dropClean()
        self.decompressed.forget()
        const cluster0 = new Uint8Array(cs)
        yield* self.storage.read(0, cluster0)
        const image = yield* Effect.try({
          try: () => decodeImageHeader(cluster0),
          catch: (e) => new ClusterError({ reason: "Corrupt", message: `the repaired header does not decode: ${e instanceof Error ? e.message : String(e)}` })
        })
        const h = image.header
        self.header.adopt({ ...image, header: { ...h, incompatibleFeatures: h.incompatibleFeatures | (self.header.header.incompatibleFeatures & IncompatibleFeature.Corrupt) } })
        const fileSize = yield* self.storage.size()
        const reftable = new Uint8Array(h.refcountTableClusters * cs)
        yield* self.storage.read(h.refcountTableOffset, reftable)
        const l1 = new Uint8Array(Math.max(h.l1Size * 8, 8))
        if (h.l1Size > 0) yield* self.storage.read(h.l1TableOffset, l1.subarray(0, h.l1Size * 8))
        self.refcounts.reload({ offset: h.refcountTableOffset, clusters: h.refcountTableClusters }, reftable, fileSize)
        self.l1.replace(l1, h.l1TableOffset, h.l1Size)
        // A repair may have dropped snapshots (QEMU's check -r all of an oversized table).
        const table = new Uint8Array(h.nbSnapshots > 0 ? Math.max(0, Math.min(fileSize - h.snapshotsOffset, Limits.maxSnapshotTableBytes)) : 0)
        if (table.length > 0) yield* self.storage.read(h.snapshotsOffset, table)
        const snapshots = yield* Effect.try({
          try: () => decodeSnapshotTable(table, h.nbSnapshots).snapshots,
          catch: (e) => new ClusterError({ reason: "Corrupt", message: `the repaired snapshot table does not decode: ${e instanceof Error ? e.message : String(e)}` })
        })
        self.snapshots.adopt(snapshots, h.snapshotsOffset, Math.floor(h.size / 512) * 512)
      }),
      this.location
    )
  }

  /**
   * Allocates clusters for a LUKS area, writes it, and records it in the
   * header (crypt_method 2 + full disk encryption extension), or records
   * legacy AES (crypt_method 1) when `area` is undefined. For image creation.
   */
  setUpEncryption(area: Uint8Array | undefined): Effect.Effect<void, ImageError> {
    const self = this
    return this.run(
      this.lock.withPermits(1)(
        Effect.gen(function* () {
          if (area === undefined) return yield* self.header.update({ cryptMethod: 1 })
          const cs = self.geometry.clusterSize
          const clusters = Math.ceil(area.length / cs)
          const offset = yield* self.refcounts.allocate(clusters)
          const padded = new Uint8Array(clusters * cs)
          padded.set(area)
          yield* self.refcounts.cache.flush()
          yield* self.storage.write(offset, padded)
          const current = self.header.image
          yield* self.header.rewriteAll({
            ...current,
            header: { ...current.header, cryptMethod: 2 },
            extensions: { ...current.extensions, fullDiskEncryption: { offset, length: area.length } }
          })
        })
      )
    )
  }

  /** Takes an internal snapshot of the active state (`qemu-img snapshot -c`; see snapshot.ts). */
  createSnapshot(name: string, time: SnapshotTime, icount = 0n): Effect.Effect<SnapshotEntry, ImageError> {
    const bad = this.requireWritable()
    if (bad) return Effect.fail(bad)
    return this.run(
      Effect.andThen(this.integrity.beforeMetadataChange(), this.inflight.excludingDirect(this.inflight.withLockDrained(this.lock, createSnapshot(this, name, time, icount))))
    )
  }

  /**
   * Reverts to the snapshot with this ID, else this name (`qemu-img snapshot
   * -a`): the virtual size becomes the snapshot's (QEMU refuses that on v2
   * images), then its tables become the active ones.
   */
  applySnapshot(idOrName: string): Effect.Effect<void, ImageError> {
    const bad = this.requireWritable()
    if (bad) return Effect.fail(bad)
    const self = this
    return this.run(
      this.inflight.excludingDirect(Effect.gen(function* () {
        const s = snapshotForApply(self, idOrName)
        if (s instanceof ClusterError) return yield* s
        yield* self.integrity.beforeMetadataChange()
        if (s.diskSize !== undefined && s.diskSize !== self.virtualSize) {
          if (self.version < 3) {
            return yield* new ClusterError({ reason: "Unsupported", message: "Can't resize a v2 image which has snapshots", errno: "ENOTSUP" })
          }
          yield* truncateImage(self, s.diskSize, "off")
        }
        yield* self.inflight.withLockDrained(self.lock, applySnapshot(self, s))
      }))
    )
  }

  /** Deletes the snapshot matching `id` and `name` (either may be omitted, not both; `qemu-img snapshot -d`). */
  deleteSnapshot(id: string | undefined, name: string | undefined): Effect.Effect<void, ImageError> {
    const bad = this.requireWritable()
    if (bad) return Effect.fail(bad)
    return this.run(
      Effect.andThen(this.integrity.beforeMetadataChange(), this.inflight.excludingDirect(this.inflight.withLockDrained(this.lock, deleteSnapshot(this, id, name))))
    )
  }

  /** Makes reads of this read-only engine see a snapshot's content (`qemu-img convert -l`). */
  loadSnapshot(id: string | undefined, name: string | undefined): Effect.Effect<void, ImageError> {
    return this.run(this.lock.withPermits(1)(loadSnapshot(this, id, name)))
  }

  /**
   * Makes every cluster of the active layer unallocated (the backing file
   * shows through again) and frees what they held: QEMU's
   * `bdrv_make_empty` of a qcow2 image, as `qemu-img commit` uses it. An
   * image with nothing else in it is rebuilt as a fresh one (its file cut
   * after the L1 table), as QEMU's make_completely_empty does.
   */
  makeEmpty(): Effect.Effect<void, ImageError> {
    const bad = this.requireWritable()
    if (bad) return Effect.fail(bad)
    if (this.virtualSize === 0) return Effect.void
    if (!canEmptyCompletely(this)) return this.inflight.excludingDirect(this.change(dropClusters(this, 0, this.virtualSize)))
    // Rebuilt from scratch (make-empty.ts); a failure half way leaves the
    // tables in memory wrong, so nothing more is written back (QEMU drops
    // the node) and the dirty bit on disk asks for the repair.
    return this.inflight.excludingDirect(
      this.change(
        this.inflight.withLockDrained(
          this.lock,
          Effect.onError(Effect.andThen(emptyCompletely(this), this.reload()), () => Effect.sync(() => void (this.closed = true)))
        )
      )
    )
  }

  /**
   * Records a new backing file name and format in the header (cluster 0
   * rewritten through `HeaderState`), or none: QEMU's
   * qcow2_change_backing_file. Refused as QEMU refuses it: a backing file
   * on a raw external data file or a name over 1023 bytes (InvalidArgument),
   * a header that no longer fits its cluster (NoSpace).
   */
  setBacking(name: string | undefined, format: string | undefined): Effect.Effect<void, ImageError> {
    const bad = this.requireWritable()
    if (bad) return Effect.fail(bad)
    const current = this.header.image
    if (name !== undefined && (current.header.autoclearFeatures & AutoclearFeature.RawExternalData) !== 0n) {
      return Effect.fail(new ImageError({ reason: "InvalidArgument", message: "a raw external data file cannot have a backing file", location: this.location, errno: "EINVAL" }))
    }
    if (name !== undefined && new TextEncoder().encode(name).length > 1023) {
      return Effect.fail(new ImageError({ reason: "InvalidArgument", message: "backing file name too long", location: this.location, errno: "EINVAL" }))
    }
    const { backingFormat: _dropped, ...otherExtensions } = current.extensions
    const next: ImageHeader = {
      ...current,
      backingFile: name,
      extensions: format !== undefined ? { ...otherExtensions, backingFormat: format } : otherExtensions
    }
    try {
      encodeImageHeader(next)
    } catch {
      return Effect.fail(new ImageError({ reason: "NoSpace", message: "No space left in the file header", location: this.location, errno: "ENOSPC" }))
    }
    return this.run(this.lock.withPermits(1)(this.header.rewriteAll(next)))
  }

  /**
   * Stores the persistent bitmaps (in_use cleared), writes back the L2
   * table cache and then the refcount block cache, each followed by a
   * storage flush, and after a clean session of a lazy-refcount image
   * clears the dirty bit (QEMU's qcow2_inactivate). Runs once; later calls
   * do nothing. Never fails: bitmaps that cannot be stored stay marked in
   * use on disk, and each cache that could not be written back is returned
   * (QEMU reports them: "Failed to flush the L2 table cache: …"). A corrupt
   * image writes no metadata any more (QEMU closes it without this step).
   */
  close(): Effect.Effect<ReadonlyArray<CacheFlushFailure>> {
    if (this.integrity.readOnly || this.closed) return Effect.succeed([])
    this.closed = true
    const self = this
    return Effect.gen(function* () {
      yield* Effect.ignore(self.bitmaps.store())
      if (self.integrity.isCorrupt) {
        yield* Effect.ignore(self.flushMetadata())
        return []
      }
      const failures: CacheFlushFailure[] = []
      for (const [cache, tables] of [["L2 table", self.l2Cache], ["refcount block", self.refcounts.cache]] as const) {
        // As QEMU's qcow2_cache_entry_flush: a cache with nothing dirty writes nothing, not even the cache it depends on.
        const result = yield* Effect.result(self.run(Effect.suspend(() => (tables.hasDirty ? tables.flush() : self.storage.flush()))))
        if (result._tag === "Failure") failures.push({ cache, error: result.failure })
      }
      if (self.data !== self.storage) yield* Effect.ignore(self.data.flush())
      if (failures.length === 0) yield* Effect.ignore(self.run(self.integrity.markClean()))
      return failures
    })
  }

  /** A metadata-changing request: the dirty bit (lazy refcounts) goes to disk first. */
  private change(effect: Effect.Effect<void, EngineFailure>): Effect.Effect<void, ImageError> {
    const checked = Effect.andThen(this.integrity.beforeMetadataChange(), effect)
    // overlap-check.inactive-l2: the snapshots' L2 tables are indexed before the first change that could hit one.
    return this.run(this.integrity.overlaps.inactiveL2Ready ? checked : Effect.andThen(this.snapshots.indexInactiveL2(this.storage), checked))
  }

  /** Presents failures as ImageError; structural damage met on the way marks the image corrupt first (rule 5). */
  private run<A>(effect: Effect.Effect<A, EngineFailure>): Effect.Effect<A, ImageError> {
    return Effect.mapError(
      Effect.tapError(effect, (error) =>
        isStructuralDamage(error) ? Effect.ignore(this.integrity.markCorrupt(error.message, error.offset)) : Effect.void
      ),
      (error) => toImageError(error, this.location)
    )
  }

  /** ENOMEDIUM once a fatal corruption event took the image out of service (see Integrity.ejected): checked before anything else as QEMU's block layer does, and where a request resumes after waiting (the copy-on-write read). */
  requireMedium(): ImageError | undefined {
    if (!this.integrity.ejected) return undefined
    return new ImageError({
      reason: "Corrupt",
      message: `${this.location} was marked corrupt and takes no more requests in this session (No medium found)`,
      location: this.location,
      errno: "ENOMEDIUM"
    })
  }

  private requireWritable(): ImageError | undefined {
    const refused = this.integrity.refuseWrite()
    return refused === undefined ? undefined : toImageError(refused, this.location)
  }

  private requireKey(): ImageError | undefined {
    if (this.header.header.cryptMethod === 0 || this.crypto !== undefined) return undefined
    return new ImageError({ reason: "Encryption", message: `${this.location} is encrypted: a passphrase is needed to read or write its data`, location: this.location })
  }

  private checkRange(offset: number, length: number): ImageError | undefined {
    return checkRange(this.location, this.virtualSize, offset, length)
  }

  private invalid(message: string): ImageError {
    return new ImageError({ reason: "InvalidArgument", message, location: this.location })
  }
}
