import type { Deferred, Effect } from "effect"
import type { CheckResult } from "@qcow2/check"
import type { BlockStatus, CacheFlushFailure, PersistentBitmaps, Preallocation, SnapshotTime } from "@qcow2/cluster"
import type { BitmapDirectoryEntry, ImageHeader, SnapshotEntry } from "@qcow2/format"
import type { CompressionError } from "@qcow2/compress"
import type { LuksHeader } from "@qcow2/crypto"
import type { ImageError } from "./errors.js"

export type { BlockStatus, CacheFlushFailure, PersistentBitmaps }

/** The formats this toolkit opens: qcow2, raw, and raw LUKS1 volumes (QEMU's `luks` driver). */
export type ImageFormat = "qcow2" | "raw" | "luks"

/** The driver of an open image's top node: one of the formats, or QEMU's null-co device (`makeNullImage`). */
export type NodeDriver = ImageFormat | "null-co"

/** The result of `check`, with qemu-img check's fields (defined by @qcow2/check). */
export type { CheckResult }

/** An open image (qcow2, raw or LUKS, with its backing chain): guest-offset reads and writes and the qemu-img operations on it. Closed with the scope it was opened in. */
export interface Image {
  readonly format: NodeDriver
  /** Name the image was opened by (path or URL). */
  readonly location: string
  readonly readOnly: boolean
  readonly virtualSize: number
  /** Cluster size (qcow2) or 512 (raw). */
  readonly clusterSize: number
  /** Parsed header of a qcow2 image (undefined for raw). Reflects the current in-memory state. */
  readonly header: ImageHeader | undefined
  readonly snapshots: ReadonlyArray<SnapshotEntry>
  /** The opened backing image, if any (already resolved and opened). */
  readonly backing: Image | undefined
  /** Backing file name as recorded in the header, and the resolved name actually opened. */
  readonly backingFileName: string | undefined
  readonly backingFileResolved: string | undefined
  /** Name of the external data file (qcow2 with data_file), resolved. */
  readonly dataFile: string | undefined

  /** Reads `into.length` bytes at guest `offset` (any alignment). */
  readonly read: (offset: number, into: Uint8Array) => Effect.Effect<void, ImageError>
  /**
   * Writes `data` at guest `offset` (any alignment; allocates and copies on
   * write as needed). `options.placed`, where the format allocates (qcow2),
   * is completed once the host clusters of the whole write are decided,
   * before its data is written: a later write may then start and is laid
   * out after it (qemu-img convert's in-order writes, overlapped). Formats
   * that do not allocate may leave it alone; the caller completes it when
   * the write ends.
   */
  readonly write: (offset: number, data: Uint8Array, options?: { readonly placed?: Deferred.Deferred<void> }) => Effect.Effect<void, ImageError>
  /** Writes zeros; `unmap` lets the image deallocate (qemu-io `write -z -u`). */
  readonly writeZeroes: (offset: number, length: number, options?: { readonly unmap?: boolean }) => Effect.Effect<void, ImageError>
  /** Discards the range (qemu-io `discard`), as QEMU's driver for the format does. */
  readonly discard: (offset: number, length: number) => Effect.Effect<void, ImageError>
  /** Writes whole aligned clusters compressed (qemu-io `write -c`). */
  readonly writeCompressed: (offset: number, data: Uint8Array) => Effect.Effect<void, ImageError>
  /** Makes everything written so far durable (metadata caches written back, storage flushed). */
  readonly flush: () => Effect.Effect<void, ImageError>
  /**
   * Writes back what the image caches, once, as QEMU does when it closes a
   * qcow2 node (qcow2_inactivate); closing the scope afterwards writes
   * nothing more. Never fails: returns the caches that could not be written
   * back, for QEMU's "Failed to flush the … cache" messages. Absent where
   * nothing is cached (raw).
   */
  readonly close?: () => Effect.Effect<ReadonlyArray<CacheFlushFailure>>
  /**
   * Whether a fatal corruption event took the image out of service in this
   * process (QEMU's bs->drv = NULL): every request then fails with
   * ENOMEDIUM, and QEMU's length query does too. Absent where that cannot
   * happen (raw).
   */
  readonly outOfService?: () => boolean
  /**
   * The VM state area (qemu-io `read -b` / `write -b`; QEMU's
   * bdrv_load/save_vmstate): bytes at `pos` of the area qcow2 keeps past
   * the guest disk. Undefined for formats without one (raw).
   */
  readonly vmState?: {
    /** Reads VM state bytes at `pos`. */
    readonly read: (pos: number, into: Uint8Array) => Effect.Effect<void, ImageError>
    /** Writes VM state bytes at `pos`. */
    readonly write: (pos: number, data: Uint8Array) => Effect.Effect<void, ImageError>
  }
  /**
   * Grows (or with `shrink`, shrinks) the virtual size; `preallocation`
   * allocates the new area as `qemu-img resize --preallocation` does.
   */
  readonly truncate: (size: number, options?: TruncateOptions) => Effect.Effect<void, ImageError>
  /**
   * Status of the extent starting at `offset`, at most `length` bytes long;
   * adjacent clusters with equal status are merged.
   */
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<BlockStatus, ImageError>
  /**
   * What qemu-img info shows under "format-specific" beyond the header: the
   * LUKS header of an encrypted qcow2 image, its persistent bitmaps (while
   * consistent). Read through the open image; empty for raw images.
   */
  readonly formatSpecific: () => Effect.Effect<FormatSpecific, ImageError>
  /** qemu-img check (and `-r leaks|all` repair) of the image file. */
  readonly check: (options?: { readonly repair?: "leaks" | "all" }) => Effect.Effect<CheckResult, ImageError>
  /**
   * Persistent dirty bitmaps of a qcow2 image (qcow2.txt "Bitmaps"), loaded
   * on open, tracking writes while open read-write, stored on close;
   * undefined for formats without them (raw).
   */
  readonly bitmaps?: PersistentBitmaps
  /**
   * Makes every cluster unallocated again (the backing file shows through),
   * as QEMU's `bdrv_make_empty` after `qemu-img commit`; raw images refuse
   * (Unsupported, which qemu-img commit ignores).
   */
  readonly makeEmpty: () => Effect.Effect<void, ImageError>
  /**
   * Rewrites the backing file name and format recorded in the header (none
   * when `name` is undefined), as QEMU's `bdrv_change_backing_file`; the
   * open backing chain is not changed. Raw images refuse (Unsupported).
   */
  readonly setBacking: (name: string | undefined, format: string | undefined) => Effect.Effect<void, ImageError>
  /** Internal snapshots (qcow2 spec "Snapshots"); undefined for a format without them (raw). */
  readonly internalSnapshots: InternalSnapshots | undefined
}

/**
 * What `qemu-img snapshot` and `convert -l` do with internal snapshots
 * (QEMU's qcow2_snapshot_create / goto / delete / load_tmp). `Image.snapshots`
 * reflects the table after each change.
 */
export interface InternalSnapshots {
  /** Takes a snapshot named `name` (ID: one more than the largest), VM state empty, dated `time`, icount 0 unless given. */
  readonly create: (name: string, time: SnapshotTime, icount?: bigint) => Effect.Effect<SnapshotEntry, ImageError>
  /** Reverts to the snapshot with this ID, else this name; the virtual size becomes the snapshot's. */
  readonly apply: (idOrName: string) => Effect.Effect<void, ImageError>
  /** Deletes the snapshot matching `id` and `name` (either may be omitted, not both). */
  readonly delete: (id: string | undefined, name: string | undefined) => Effect.Effect<void, ImageError>
  /** Reads of a read-only image see the snapshot matching `id` and `name` from now on. */
  readonly load: (id: string | undefined, name: string | undefined) => Effect.Effect<void, ImageError>
}

/** Options of `truncate` (qemu-img resize `--shrink`, `--preallocation`). */
export interface TruncateOptions {
  readonly shrink?: boolean
  readonly preallocation?: Preallocation
}

/** Format-specific details of an image (see `Image.formatSpecific`). */
export interface FormatSpecific {
  readonly luks?: LuksHeader
  readonly bitmaps?: ReadonlyArray<BitmapDirectoryEntry>
}

/** Options of `openImage`. */
export interface OpenOptions {
  readonly readOnly?: boolean
  /** Skip probing and open as this format. */
  readonly format?: ImageFormat
  /** Open the backing chain (default true). */
  readonly openBacking?: boolean
  /**
   * Lazy refcounts for this session whatever the image's compatible bit
   * says (QEMU's `lazy-refcounts` runtime option; v3 images only).
   */
  readonly lazyRefcounts?: boolean
  /**
   * QEMU's `overlap-check.inactive-l2` runtime option: before every write,
   * the snapshots' L1 tables are validated, and a bad one fails the write
   * with its errno (as QEMU's check does when it cannot read them).
   */
  readonly checksInactiveL2?: boolean
  /** Open the image's backing file as this format, whatever the image names (QEMU's `backing.driver`). */
  readonly backingFormat?: ImageFormat
  /** Cache sizes in bytes. */
  readonly l2CacheBytes?: number
  readonly refcountCacheBytes?: number
  /**
   * Where the driver's own messages go, one line each, as QEMU's qcow2
   * driver prints them on stderr ("qcow2: Marking image as corrupt: …").
   * Without it they are not shown (the failures themselves still are).
   */
  readonly report?: (line: string) => void
  /** Passphrase for encrypted images. */
  readonly passphrase?: Uint8Array
  /** Passphrase for the images of the backing chain, when it is not `passphrase` (QEMU's backing.encrypt.key-secret). */
  readonly backingPassphrase?: Uint8Array
  /**
   * Open for metadata only (QEMU's BDRV_O_NO_IO, as `qemu-img info` opens):
   * an encrypted image opens without its passphrase, and its data cannot be
   * read. Otherwise an encrypted image without a passphrase is refused.
   */
  readonly noIo?: boolean
  /**
   * Compresses one cluster for compressed writes, in place of the
   * ClusterCodec (e.g. a worker pool); `undefined` = store uncompressed.
   */
  readonly compress?: (type: 0 | 1, cluster: Uint8Array, level: number | undefined) => Effect.Effect<Uint8Array | undefined, CompressionError>
  /**
   * Compresses the whole clusters of one compressed write at once (e.g.
   * CompressionPool.compressClusters: one message to a worker), in place of
   * `compress` per cluster; the results are valid until `use` settles.
   */
  readonly compressClusters?: <A, E, R>(
    type: 0 | 1,
    data: Uint8Array,
    clusterSize: number,
    level: number | undefined,
    use: (results: ReadonlyArray<Uint8Array | undefined>) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | CompressionError, R>
  /** Compression level for compressed writes (deflate 0–9, zstd up to 22); the codec default otherwise. */
  readonly compressionLevel?: number
  /**
   * Open for `check`/repair (QEMU's BDRV_O_CHECK): a dirty image is not
   * repaired on open, and a corrupt image may be opened read-write so that
   * `check({ repair })` can fix it.
   */
  readonly forCheck?: boolean
  /**
   * Resolved name of one image of the backing chain to open read-write
   * (the rest stays read-only), as `qemu-img commit` reopens its base.
   */
  readonly readWriteBacking?: string
  /**
   * Share every permission with other users of the files (qemu-img `-U`,
   * force-share=on): no lock refuses the open. Read-only opens only.
   * Otherwise the files are locked as QEMU locks them (see `lockRequest`).
   */
  readonly forceShare?: boolean
}

/** `qemu-img create -f qcow2 -o …` options, named as qemu-img names them (camelCased). */
export interface CreateOptions {
  /** Virtual size in bytes; defaults to the backing file's size when a backing file is given. */
  readonly size?: number
  readonly clusterSize?: number // default 65536
  readonly compat?: "0.10" | "1.1" // default "1.1"
  readonly refcountBits?: number // default 16
  readonly lazyRefcounts?: boolean
  readonly extendedL2?: boolean
  readonly compressionType?: "zlib" | "zstd"
  readonly backingFile?: string
  readonly backingFormat?: ImageFormat
  readonly dataFile?: string
  readonly dataFileRaw?: boolean
  readonly preallocation?: "off" | "metadata" | "falloc" | "full"
  readonly encryption?: {
    readonly format: "aes" | "luks"
    readonly passphrase: Uint8Array
    readonly cipherAlg?: string
    readonly cipherMode?: string
    readonly ivgenAlg?: string
    readonly ivgenHashAlg?: string
    readonly hashAlg?: string
    readonly iterTimeMs?: number
    /** Fixed PBKDF2 iteration counts instead of timing (tests, reproducible output). */
    readonly slotIterations?: number
    readonly masterKeyIterations?: number
  }
}
