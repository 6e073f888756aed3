/**
 * The errors the Promise API rejects with: plain `Error` subclasses that
 * carry the `_tag` and `reason` of the Effect API's errors, so a `catch`
 * can tell a corrupt image (`reason === "Corrupt"`) from a wrong passphrase
 * (`instanceof WrongPassphraseError`) from a full disk
 * (`instanceof NoSpaceError`).
 *
 * Classes:
 * - `Qcow2Error`: base of every error below.
 * - `ImageError`: any image problem; `reason` is the Effect API's
 *   ImageErrorReason ("NotQcow2", "Corrupt", "Unsupported", "ReadOnly",
 *   "InvalidArgument", "BackingChain", "Decompression", "Compression",
 *   "Encryption", "RefcountOverflow", "NoSpace", "Storage").
 *   - `WrongPassphraseError`: reason "Encryption", no LUKS key slot
 *     accepted the passphrase.
 *   - `NoSpaceError`: reason "NoSpace" (the format's limit) or "Storage"
 *     with errno ENOSPC (the disk is full).
 * - `ImageClosedError`: a method was called on an image after `close()`.
 * - `AbortError`: `convert` was aborted through its AbortSignal.
 */
import type { ImageErrorReason } from "@qcow2/image"

export type { ImageErrorReason }

/** Base class of every error the Promise API rejects with. */
export class Qcow2Error extends Error {
  /** The tag of the corresponding Effect error (or of this error's kind). */
  readonly _tag: string
  // Each class names itself: `new.target.name` would be whatever a bundler renamed the class to.
  override name = "Qcow2Error"

  constructor(tag: string, message: string, options?: { readonly cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined)
    this._tag = tag
  }
}

/** Fields of an ImageError besides its message. */
export interface ImageErrorDetails {
  readonly reason: ImageErrorReason
  /** The image (path or URL) the problem is in. */
  readonly location?: string
  /** Byte offset in that file, where it helps. */
  readonly offset?: number
  /** The POSIX error QEMU reports for the same failure (e.g. "ENOSPC", "EIO"), when known. */
  readonly errno?: string
  readonly cause?: unknown
}

/** An image problem: the Effect API's `ImageError` (same `_tag` "ImageError" and `reason`). */
export class ImageError extends Qcow2Error {
  declare readonly _tag: "ImageError"
  override name = "ImageError"
  readonly reason: ImageErrorReason
  readonly location: string | undefined
  readonly offset: number | undefined
  readonly errno: string | undefined

  constructor(message: string, details: ImageErrorDetails) {
    super("ImageError", message, { cause: details.cause })
    this.reason = details.reason
    this.location = details.location
    this.offset = details.offset
    this.errno = details.errno
  }
}

/** No active LUKS key slot accepted the passphrase (reason "Encryption"). */
export class WrongPassphraseError extends ImageError {
  override name = "WrongPassphraseError"
}

/** The disk is full (errno ENOSPC), or host offsets would pass the format's limit (reason "NoSpace"). */
export class NoSpaceError extends ImageError {
  override name = "NoSpaceError"
}

/** A method was called on an image that was closed. */
export class ImageClosedError extends Qcow2Error {
  declare readonly _tag: "ImageClosedError"
  override name = "ImageClosedError"
  readonly location: string

  constructor(location: string) {
    super("ImageClosedError", `image ${location} is closed`)
    this.location = location
  }
}

/** An operation stopped by its AbortSignal (`name` is "AbortError", as DOM aborts are named). */
export class AbortError extends Qcow2Error {
  declare readonly _tag: "AbortError"
  override name = "AbortError"

  constructor(message = "The operation was aborted", options?: { readonly cause?: unknown }) {
    super("AbortError", message, options)
  }
}
