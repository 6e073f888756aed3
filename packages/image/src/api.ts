import type { Effect } from "effect"
import type { CheckResult } from "@qcow2/check"
import type { BlockStatus, PersistentBitmaps, Preallocation } from "@qcow2/cluster"
import type { BitmapDirectoryEntry, ImageHeader, SnapshotEntry } from "@qcow2/format"
import type { CompressionError } from "@qcow2/compress"
import type { LuksHeader } from "@qcow2/crypto"
import type { ImageError } from "./errors.js"

export type { BlockStatus, PersistentBitmaps }

export type ImageFormat = "qcow2" | "raw"

/** The result of `check`, with qemu-img check's fields (defined by @qcow2/check). */
export type { CheckResult }

export interface Image {
  readonly format: ImageFormat
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
  readonly write: (offset: number, data: Uint8Array) => Effect.Effect<void, ImageError>
  /** Writes zeros; `unmap` lets the image deallocate (qemu-io `write -z -u`). */
  readonly writeZeroes: (offset: number, length: number, options?: { readonly unmap?: boolean }) => Effect.Effect<void, ImageError>
  readonly discard: (offset: number, length: number) => Effect.Effect<void, ImageError>
  /** Writes whole aligned clusters compressed (qemu-io `write -c`). */
  readonly writeCompressed: (offset: number, data: Uint8Array) => Effect.Effect<void, ImageError>
  readonly flush: () => Effect.Effect<void, ImageError>
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
  readonly check: (options?: { readonly repair?: "leaks" | "all" }) => Effect.Effect<CheckResult, ImageError>
  /**
   * Persistent dirty bitmaps of a qcow2 image (qcow2.txt "Bitmaps"), loaded
   * on open, tracking writes while open read-write, stored on close;
   * undefined for formats without them (raw).
   */
  readonly bitmaps?: PersistentBitmaps
}

export interface TruncateOptions {
  readonly shrink?: boolean
  readonly preallocation?: Preallocation
}

/** Format-specific details of an image (see `Image.formatSpecific`). */
export interface FormatSpecific {
  readonly luks?: LuksHeader
  readonly bitmaps?: ReadonlyArray<BitmapDirectoryEntry>
}

export interface OpenOptions {
  readonly readOnly?: boolean
  /** Skip probing and open as this format. */
  readonly format?: ImageFormat
  /** Open the backing chain (default true). */
  readonly openBacking?: boolean
  /** Cache sizes in bytes. */
  readonly l2CacheBytes?: number
  readonly refcountCacheBytes?: number
  /** Passphrase for encrypted images. */
  readonly passphrase?: Uint8Array
  /**
   * Compresses one cluster for compressed writes, in place of the
   * ClusterCodec (e.g. a worker pool); `undefined` = store uncompressed.
   */
  readonly compress?: (type: 0 | 1, cluster: Uint8Array, level: number | undefined) => Effect.Effect<Uint8Array | undefined, CompressionError>
  /** Compression level for compressed writes (deflate 0–9, zstd up to 22); the codec default otherwise. */
  readonly compressionLevel?: number
  /**
   * Open for `check`/repair (QEMU's BDRV_O_CHECK): a dirty image is not
   * repaired on open, and a corrupt image may be opened read-write so that
   * `check({ repair })` can fix it.
   */
  readonly forCheck?: boolean
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
