import type { Effect, Semaphore } from "effect"
import type { Refcounts, RefcountError } from "@qcow2/alloc"
import type { TableCache } from "@qcow2/cache"
import type { Geometry } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import type { InFlightAllocations } from "./inflight.js"

/** Reads guest bytes of the layer below (the backing file). */
export interface BackingReader {
  readonly size: number
  readonly read: (offset: number, into: Uint8Array) => Effect.Effect<void, unknown>
}

/** Decompresses one compressed cluster into `out` (exactly one cluster). */
export type Decompress = (input: Uint8Array, out: Uint8Array) => Effect.Effect<void, unknown>
/** Compresses one cluster; undefined when it does not get smaller. */
export type Compress = (input: Uint8Array) => Effect.Effect<Uint8Array | undefined, unknown>

/** Encrypts or decrypts whole 512-byte sectors in place; `offset` selects the IV. */
export interface SectorCrypto {
  readonly encrypt: (offset: number, data: Uint8Array) => void
  readonly decrypt: (offset: number, data: Uint8Array) => void
  /** Whether the IV follows the guest offset (legacy AES) or the host offset (LUKS). */
  readonly ivFrom: "guest" | "host"
}

/**
 * Everything the mapping layer needs about one open qcow2 image. Owned and
 * kept current by the driver (@qcow2/image); plain mutable state, guarded by
 * `lock` for metadata changes.
 */
export interface ClusterContext {
  readonly location: string
  /** The qcow2 file: metadata, and data unless there is an external data file. */
  readonly storage: BlockStorageShape
  /** Where data clusters live: `storage`, or the external data file. */
  readonly data: BlockStorageShape
  readonly externalData: boolean
  /** data_file_raw: guest offset == host offset in the data file. */
  readonly rawExternalData: boolean
  readonly geometry: Geometry
  readonly version: 2 | 3
  virtualSize: number
  /** The active L1 table, in memory (written through on change). */
  l1: Uint8Array
  l1Offset: number
  l1Size: number
  readonly l2Cache: TableCache
  /** Replaced when a repair rewrites the refcount structures. */
  refcounts: Refcounts
  readonly backing: BackingReader | undefined
  readonly decompress: Decompress
  readonly compress: Compress
  readonly crypto: SectorCrypto | undefined
  /** Metadata lock (QEMU's s->lock): one holder changes L1/L2/refcounts at a time. */
  readonly lock: Semaphore.Semaphore
  readonly inflight: InFlightAllocations
  /** Lazy refcounts in effect (dirty bit set): refcount writes need no ordering. */
  readonly lazyRefcounts: boolean
  /** Writes the L1 location to the header (L1 growth). */
  readonly commitL1: (offset: number, size: number) => Effect.Effect<void, StorageError>
  /**
   * Records a structural problem: sets the corrupt bit, refuses further
   * writes, and fails with a Corrupt error carrying `message`.
   */
  readonly corrupt: (message: string, offset?: number) => Effect.Effect<never, ClusterFailure>
  /** Refuses writes once the image is read-only or corrupt. */
  readonly writable: () => boolean
  /**
   * Names the metadata structure that host range [hostOffset, +length)
   * overlaps, if any; `except` skips one kind (an L2 table is allowed to
   * be an L2 table).
   */
  readonly overlapsMetadata: (hostOffset: number, length: number, except?: "l2") => string | undefined
}

export type ClusterFailure = import("./errors.js").ClusterError | RefcountError | StorageError
