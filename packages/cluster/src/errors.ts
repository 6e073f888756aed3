import { Data, Effect } from "effect"
import type { RefcountError } from "@qcow2/alloc"
import type { MetadataOverlapError } from "@qcow2/cache"
import type { CompressionError, DecompressionError } from "@qcow2/compress"
import { strerrorOf, type StorageError } from "@qcow2/storage"

/**
 * A mapping problem found in the image's L1/L2 tables, or a request the
 * mapping layer cannot serve.
 * - `Corrupt`: an entry no valid image has (the engine marks the image corrupt).
 * - `ReadOnly`: a write reached an image opened read-only or flagged corrupt.
 * - `Unsupported`: e.g. compressed writes with an external data file.
 * - `InvalidArgument`: e.g. a compressed write that is not one whole cluster.
 */
export class ClusterError extends Data.TaggedError("ClusterError")<{
  readonly reason: "Corrupt" | "ReadOnly" | "Unsupported" | "InvalidArgument"
  readonly message: string
  readonly offset?: number
  /** The POSIX error QEMU returns in this situation, when it differs from what `reason` suggests. */
  readonly errno?: "EIO" | "EINVAL" | "ENOTSUP" | "EFBIG" | "ENOENT" | "EAGAIN"
}> {}

/**
 * Why an image operation failed. One family for every image problem so a
 * caller (the CLI, the Promise facade) can map reasons to messages and exit
 * codes with one exhaustive switch.
 */
export type ImageErrorReason =
  | "NotQcow2" // magic or format mismatch
  | "Corrupt" // structural damage found while reading or writing
  | "Unsupported" // unknown incompatible feature, unsupported version/option
  | "ReadOnly" // write to a read-only or corrupt-flagged image
  | "InvalidArgument" // offset/length outside the image, bad option
  | "BackingChain" // missing backing file, loop, too deep
  | "Decompression" // a compressed cluster failed to decode
  | "Compression" // a cluster could not be compressed
  | "Encryption" // bad passphrase, missing secret, unsupported cipher
  | "RefcountOverflow" // a refcount would exceed refcount_bits
  | "NoSpace" // the store is full, or host offsets would exceed the format's limit
  | "Storage" // the byte store failed (cause: StorageError)
  | "Locked" // another process uses the file in a way this open may not share (QEMU's image locking)

/** The one error family of an open image (the engine's and the driver's). */
export class ImageError extends Data.TaggedError("ImageError")<{
  readonly reason: ImageErrorReason
  readonly message: string
  /** Image (path or URL) the problem is in. */
  readonly location?: string
  /** Byte offset in that file, where it helps. */
  readonly offset?: number
  /**
   * The POSIX error QEMU reports for the same failure (qemu-io prints its
   * text), when a lower layer knows it; otherwise derive it from `reason`.
   */
  readonly errno?: string
  /** The failure below this one, for diagnostics. */
  readonly cause?: unknown
  /**
   * Messages QEMU's error_report prints before this failure's own, in
   * order ("Snapshot L1 table offset invalid" before "Failed to turn zero
   * into data clusters: …"); a front end prefixes each as it does `message`.
   */
  readonly reported?: ReadonlyArray<string>
}> {}

/** Every failure a request can meet inside the engine, before it is presented as an ImageError. */
export type EngineFailure =
  | ClusterError
  | RefcountError
  | MetadataOverlapError
  | StorageError
  | DecompressionError
  | CompressionError
  | ImageError

/**
 * Whether a failure is structural damage found on the way (a refcount
 * below zero, an unaligned refcount block, a table write-back refused by
 * the overlap check): the engine marks the image corrupt for it (rule 5).
 */
export const isStructuralDamage = (error: EngineFailure): error is RefcountError | MetadataOverlapError =>
  (error._tag === "RefcountError" && error.reason === "Corrupt") || error._tag === "MetadataOverlapError"

const withOffset = (offset: number | undefined) => (offset !== undefined ? { offset } : {})

/**
 * Presents a failure of any layer below as an ImageError of `location`,
 * keeping the cause. Exhaustive: a new error class or reason below is a
 * compile error here, not a silent "Storage".
 */
export function toImageError(error: EngineFailure, location: string): ImageError {
  switch (error._tag) {
    case "ImageError":
      return error
    case "ClusterError":
      return new ImageError({ reason: error.reason, message: error.message, location, ...withOffset(error.offset), ...(error.errno ? { errno: error.errno } : {}), cause: error })
    case "RefcountError": {
      const reason = refcountReason(error.reason)
      return new ImageError({ reason, message: error.message, location, ...withOffset(error.offset), ...refcountErrno(error), cause: error })
    }
    case "MetadataOverlapError":
      return new ImageError({ reason: "Corrupt", message: error.message, location, offset: error.offset, errno: "EIO", cause: error })
    case "StorageError":
      return new ImageError({ reason: storageReason(error.reason), message: error.message, location, ...withOffset(error.offset), ...storageErrno(error), cause: error })
    case "DecompressionError":
      return new ImageError({ reason: "Decompression", message: error.message, location, errno: "EIO", cause: error })
    case "CompressionError":
      return new ImageError({ reason: "Compression", message: error.message, location, errno: "EIO", cause: error })
  }
}

/**
 * The errno QEMU returns for a failure of this kind, when no layer below
 * knew a more precise one (QEMU's update_refcount fails an increment past
 * the maximum with EINVAL; everything that is not the caller's fault is EIO).
 */
export function errnoOfReason(reason: ImageErrorReason): "EINVAL" | "ENOTSUP" | "ENOSPC" | "EACCES" | "EAGAIN" | "EIO" {
  switch (reason) {
    case "InvalidArgument":
    case "RefcountOverflow":
      return "EINVAL"
    case "Unsupported":
      return "ENOTSUP"
    case "NoSpace":
      return "ENOSPC"
    case "ReadOnly":
      return "EACCES"
    case "Locked":
      return "EAGAIN"
    case "NotQcow2":
    case "Corrupt":
    case "BackingChain":
    case "Decompression":
    case "Compression":
    case "Encryption":
    case "Storage":
      return "EIO"
  }
}

/**
 * The errno QEMU fails with for this failure, for messages that end in
 * its strerror() text ("Failed to free the cluster and L1 table: …"):
 * the one a layer below knew, else the usual one for its reason.
 */
export function errnoOfFailure(error: EngineFailure): string {
  const image = toImageError(error, "")
  return image.errno ?? errnoOfReason(image.reason)
}

/** strerror() of `errnoOfFailure` ("Input/output error"). */
export const strerrorOfFailure = (error: EngineFailure): string => {
  const errno = errnoOfFailure(error)
  return strerrorOf(errno) ?? errno
}

/** QEMU's errno for a refcount failure: EINVAL for a decrease below zero (update_refcount), EIO for damage. */
function refcountErrno(error: RefcountError): { readonly errno?: string } {
  if (error.errno !== undefined) return { errno: error.errno }
  if (error.reason === "Underflow") return { errno: "EINVAL" }
  return error.reason === "Corrupt" ? { errno: "EIO" } : {}
}

function refcountReason(reason: RefcountError["reason"]): ImageErrorReason {
  switch (reason) {
    case "Overflow":
      return "RefcountOverflow"
    case "Underflow":
      return "Corrupt"
    case "NoSpace":
      return "NoSpace"
    case "Corrupt":
      return "Corrupt"
  }
}

function storageReason(reason: StorageError["reason"]): ImageErrorReason {
  switch (reason) {
    case "ReadOnly":
      return "ReadOnly"
    case "NoSpace":
      return "NoSpace"
    case "Locked":
      return "Locked"
    case "NotFound":
    case "PermissionDenied":
    case "OutOfRange":
    case "Io":
    case "RemoteChanged":
    case "Unsupported":
    case "Closed":
      return "Storage"
  }
}

/** The errno a storage failure carries (set by backends that know it, e.g. ENOSPC from node:fs). */
const storageErrno = (error: StorageError): { errno?: string } => (error.errno !== undefined ? { errno: error.errno } : {})

/** Runs `effect`, presenting its failure as an ImageError of `location`. */
export const asImageError = <A, R>(effect: Effect.Effect<A, EngineFailure, R>, location: string): Effect.Effect<A, ImageError, R> =>
  Effect.mapError(effect, (e) => toImageError(e, location))

/** Why guest range [offset, offset + length) is not a valid request on an image of `size` bytes, if it is not. */
export function checkRange(location: string, size: number, offset: number, length: number): ImageError | undefined {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return new ImageError({ reason: "InvalidArgument", message: `invalid range: offset ${offset}, length ${length}`, location })
  }
  if (offset + length > size) {
    return new ImageError({ reason: "InvalidArgument", message: `range ${offset}+${length} is past the end of the image (${size} bytes)`, location })
  }
  return undefined
}
