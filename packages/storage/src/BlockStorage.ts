import { Context, Effect, type Scope } from "effect"
import type { DebugEvent } from "./debug-events.js"
import type { StorageError } from "./errors.js"

/** What a backend can do; callers adapt instead of probing with failing calls. */
export interface StorageCapabilities {
  /** Writes, resize and discard fail with reason `ReadOnly`. */
  readonly readOnly: boolean
  /** `discard` really releases space (hole punching); otherwise it is a no-op. */
  readonly discard: boolean
  /** Preferred I/O granularity in bytes (1 if none). */
  readonly alignment: number
}

/**
 * Positional byte storage: the one primitive every backend implements.
 *
 * - `read` fills `into` completely from `offset`; bytes past the end of the
 *   store read as zeros (as a POSIX file read past EOF padded by QEMU's
 *   file driver does), so a caller never sees a short read.
 * - `write` writes all of `data` at `offset`, growing the store if needed.
 * - `flush` is a barrier: everything written before it is durable when it
 *   succeeds.
 * - Offsets and lengths are non-negative safe integers; anything else fails
 *   with reason `OutOfRange`.
 */
export interface BlockStorageShape {
  readonly location: string
  readonly capabilities: StorageCapabilities
  /** Fills `into` with the bytes at `offset`; past the end they read as zeros. */
  readonly read: (offset: number, into: Uint8Array) => Effect.Effect<void, StorageError>
  /** Writes all of `data` at `offset`, growing the store if needed. */
  readonly write: (offset: number, data: Uint8Array) => Effect.Effect<void, StorageError>
  /**
   * `write` done at once on the caller's thread, where the store can do it
   * without waiting; made with {@link writeNowFor} and read with
   * {@link writeNowOf}. Optional.
   */
  readonly writeNow?: WriteNow
  /** A barrier: everything written before it is durable when it succeeds. */
  readonly flush: () => Effect.Effect<void, StorageError>
  /** The store's current size in bytes. */
  readonly size: () => Effect.Effect<number, StorageError>
  /** Grows (with zeros) or cuts the store to `size` bytes. */
  readonly resize: (size: number) => Effect.Effect<void, StorageError>
  /** Releases the byte range (punches a hole) where supported; a hint, may be a no-op. */
  readonly discard: (offset: number, length: number) => Effect.Effect<void, StorageError>
  /**
   * Bytes the store really occupies (a sparse file's allocated blocks), where
   * the backend can tell; used for `actual-size` and QEMU's detection of
   * metadata-preallocated images.
   */
  readonly allocatedSize?: () => Effect.Effect<number, StorageError>
  /**
   * Where the first data (`what` "data") or hole ("hole") at or after
   * `offset` starts, as lseek(2) SEEK_DATA / SEEK_HOLE tell it (QEMU's file
   * driver asks the same for block status): the store's size when there is
   * none. Holes read as zeros. Absent where the backend cannot tell.
   */
  readonly seekExtent?: (offset: number, what: "data" | "hole") => Effect.Effect<number, StorageError>
  /**
   * The allocation of the bytes from `offset` as the store itself reports
   * it (an NBD server's block status): the first extent, at most `length`
   * bytes long. Absent where the store has no such notion beyond
   * `seekExtent`.
   */
  readonly blockStatus?: (offset: number, length: number) => Effect.Effect<StorageExtent, StorageError>
  /**
   * Writes zeros over the range without sending them (NBD_CMD_WRITE_ZEROES).
   * The range stays allocated unless `unmap` lets the store deallocate it
   * (QEMU's BDRV_REQ_MAY_UNMAP, which qemu-img convert passes for zero
   * ranges). Absent where the store has no cheaper way than `write`.
   */
  readonly writeZeroes?: (offset: number, length: number, unmap?: boolean) => Effect.Effect<void, StorageError>
  /**
   * Replaces the image locks this open store holds with `request`, as QEMU's
   * file driver does (see {@link LockRequest}): fails with reason `Locked`
   * when another opener holds what the request conflicts with, keeping the
   * locks held before. Absent where there is nothing to share with QEMU
   * (memory, HTTP, browser stores) or no way to lock (a platform without
   * open-file-description locks): then opens never conflict.
   */
  readonly lock?: (request: LockRequest) => Effect.Effect<void, StorageError>
  /**
   * Told by the format driver what it is about to do (QEMU's
   * bdrv_debug_event, see {@link DebugEvent}); absent on ordinary stores,
   * where there is nothing to act on. A debug filter uses it to fail the
   * requests that follow.
   */
  readonly debugEvent?: (event: DebugEvent) => void
  /**
   * Where the format driver lets a debug filter hold the request that just
   * raised `event` (blkdebug's breakpoints, qemu-io `break EVENT TAG`): the
   * driver yields it right after `debugEvent` at the points of its data
   * path (write_aio, cow_read, cow_write, read_aio), and the request goes on
   * when it completes. Absent where nothing can hold a request.
   */
  readonly debugBreak?: (event: DebugEvent) => Effect.Effect<void>
}

/**
 * Raises `event` on `storage` and yields where a debug filter may hold the
 * request (see `debugBreak`), when the Effect runs: a point built into a
 * chain fires only if the chain reaches it (QEMU's BLKDBG_EVENT sits in
 * the operation itself). `Effect.void` on a store without debug hooks.
 */
export const debugPoint = (storage: BlockStorageShape, event: DebugEvent): Effect.Effect<void> => {
  const { debugEvent, debugBreak } = storage
  if (debugEvent === undefined && debugBreak === undefined) return Effect.void
  return Effect.suspend(() => {
    debugEvent?.(event)
    return debugBreak?.(event) ?? Effect.void
  })
}

/**
 * One extent of a store's own block status (QEMU's BDRV_BLOCK_DATA and
 * BDRV_BLOCK_ZERO of a protocol node): `data` when the bytes are stored,
 * `zero` when they read as zeros. Neither: unallocated, with no promise
 * about the content (an NBD context's "hole" that is not "zero").
 */
export interface StorageExtent {
  readonly length: number
  readonly data: boolean
  readonly zero: boolean
}

/**
 * QEMU's block-layer permissions (include/block/block-common.h BLK_PERM_*),
 * in bit order, named as QEMU's messages name them ('Failed to get "write"
 * lock').
 */
export const LOCK_PERMISSIONS = ["consistent read", "write", "write unchanged", "resize"] as const

/** One of QEMU's block-layer permissions, by the name its messages use. */
export type LockPermission = (typeof LOCK_PERMISSIONS)[number]

/**
 * What an opener of an image file does with it and lets others do, in
 * QEMU's terms. QEMU's file driver (block/file-posix.c) holds a shared
 * open-file-description lock on byte 100 + bit for each permission it
 * uses and on byte 200 + bit for each one it does not share; an opener
 * conflicts with another when it uses what the other does not share, or
 * does not share what the other uses. The empty request releases all.
 */
export interface LockRequest {
  readonly use: ReadonlyArray<LockPermission>
  readonly unshared: ReadonlyArray<LockPermission>
}

/** No locks: what a released store or `-U` on a metadata-only open holds. */
export const NO_LOCKS: LockRequest = { use: [], unshared: [] }

/** The storage of one image file, provided by a backend's Layer. */
export class BlockStorage extends Context.Service<BlockStorage, BlockStorageShape>()("@qcow2/storage/BlockStorage") {}

/** How to open a store by name. */
export interface OpenOptions {
  readonly readOnly: boolean
  /** Create the store (empty) if missing; truncate when `truncate` is set. */
  readonly create?: boolean
  readonly truncate?: boolean
}

/**
 * Opens stores by name: the image itself, its backing files and external
 * data files. Each backend provides one (files by path, HTTP by URL,
 * IndexedDB by key). The opened store lives until the scope closes.
 *
 * `resolve` turns a name found inside an image (a backing file name) into a
 * name relative to the image that referenced it, the way QEMU resolves
 * backing file names against the overlay's directory.
 */
export interface StorageOpenerShape {
  /** Opens the store `name`, closed when the scope closes. */
  readonly open: (name: string, options: OpenOptions) => Effect.Effect<BlockStorageShape, StorageError, Scope.Scope>
  /** The name of `name` as referenced from the store `referencedFrom` (a backing file name against its overlay). */
  readonly resolve: (referencedFrom: string, name: string) => string
}

/** The service that opens images, backing files and data files by name (Node files, HTTP, IndexedDB, Blobs, memory). */
export class StorageOpener extends Context.Service<StorageOpener, StorageOpenerShape>()("@qcow2/storage/StorageOpener") {}

/**
 * A store's `write` done at once on the caller's thread, where it can be
 * done without waiting (Node: a buffered write of whole pages that finds
 * room in the page cache): true once all of `data` is written, false when
 * it cannot now (then nothing is promised written; use `write`), or the
 * error. For the request fast path, which places a write and writes it in
 * one synchronous stretch, with nothing to hold or release between the two.
 */
export interface WriteNow {
  (offset: number, data: Uint8Array): boolean | StorageError
  /**
   * The `write` this one does at once. A wrapper that copies a store and
   * replaces its `write` (`{ ...store, write }`) leaves a `writeNow` of the
   * old `write` behind; `writeNowOf` then ignores it, so the wrapper's
   * `write` is never bypassed.
   */
  readonly of: BlockStorageShape["write"]
}

/** `now` as the {@link WriteNow} of `write`. */
export const writeNowFor = (write: BlockStorageShape["write"], now: (offset: number, data: Uint8Array) => boolean | StorageError): WriteNow =>
  Object.assign(now, { of: write })

/** `storage.writeNow` while it is the one of `storage.write`; undefined otherwise. */
export const writeNowOf = (storage: BlockStorageShape): WriteNow | undefined => {
  const now = storage.writeNow
  return now !== undefined && now.of === storage.write ? now : undefined
}
