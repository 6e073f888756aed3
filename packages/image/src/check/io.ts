import { Data, Effect } from "effect"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { ImageError } from "../errors.js"

/**
 * Ends a check the way a negative return of QEMU's qcow2_co_check ends
 * `qemu-img check`: no result is reported, only "Check failed: <strerror>".
 */
export class CheckAborted extends Data.TaggedError("CheckAborted")<{
  /** The C library's text for the errno QEMU returns ("Input/output error"). */
  readonly strerror: string
}> {}

export const EIO = "Input/output error"
export const EINVAL = "Invalid argument"
export const EFBIG = "File too large"
export const ENOMEM = "Cannot allocate memory"
export const ENOSPC = "No space left on device"

export const abort = (strerror: string): Effect.Effect<never, CheckAborted> => Effect.fail(new CheckAborted({ strerror }))

/** The byte store of the image file, with failures turned into ImageError. */
export class Io {
  constructor(readonly storage: BlockStorageShape) {}

  private readonly mapError = (e: StorageError): ImageError =>
    new ImageError({
      reason: "Storage",
      message: e.message,
      location: this.storage.location,
      ...(e.offset !== undefined ? { offset: e.offset } : {}),
      cause: e
    })

  /** Reads `length` bytes at `offset` (zeros past the end of the file). */
  read(offset: number, length: number): Effect.Effect<Uint8Array, ImageError> {
    const buf = new Uint8Array(length)
    if (length === 0) return Effect.succeed(buf)
    return this.storage.read(offset, buf).pipe(Effect.as(buf), Effect.mapError(this.mapError))
  }

  write(offset: number, data: Uint8Array): Effect.Effect<void, ImageError> {
    return this.storage.write(offset, data).pipe(Effect.mapError(this.mapError))
  }

  flush(): Effect.Effect<void, ImageError> {
    return this.storage.flush().pipe(Effect.mapError(this.mapError))
  }

  size(): Effect.Effect<number, ImageError> {
    return this.storage.size().pipe(Effect.mapError(this.mapError))
  }

  resize(size: number): Effect.Effect<void, ImageError> {
    return this.storage.resize(size).pipe(Effect.mapError(this.mapError))
  }

  /** A hint: failures are ignored, as QEMU ignores failed discards of freed clusters. */
  discard(offset: number, length: number): Effect.Effect<void> {
    return this.storage.discard(offset, length).pipe(Effect.ignore)
  }
}
