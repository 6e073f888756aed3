import { Data } from "effect"

/**
 * Why an image operation failed. One family for every image problem so a
 * caller (the CLI) can map reasons to messages and exit codes.
 */
export type ImageErrorReason =
  | "NotQcow2" // magic or format mismatch
  | "Corrupt" // structural damage found while reading or writing
  | "Unsupported" // unknown incompatible feature, unsupported version/option
  | "ReadOnly" // write to a read-only or corrupt-flagged image
  | "InvalidArgument" // offset/length outside the image, bad option
  | "BackingChain" // missing backing file, loop, too deep
  | "Decompression" // a compressed cluster failed to decode
  | "Encryption" // bad passphrase, missing secret, unsupported cipher
  | "RefcountOverflow" // a refcount would exceed refcount_bits
  | "NoSpace" // host offsets would exceed the format's limit
  | "Storage" // the byte store failed (cause: StorageError)

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
  readonly cause?: unknown
}> {}
