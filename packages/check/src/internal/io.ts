import { Data, Effect } from "effect"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"

/**
 * Ends a check the way a negative return of QEMU's qcow2_co_check ends
 * `qemu-img check`: no result is reported, only "Check failed: <strerror>".
 */
export class CheckAborted extends Data.TaggedError("CheckAborted")<{
  /** The C library's text for the errno QEMU returns ("Input/output error"). */
  readonly strerror: string
  /** The finding (already logged) that QEMU reports with error_report, its program name before it. */
  readonly reported?: string
}> {}

/** The image cannot be opened for a check (QEMU's qcow2_do_open fails even with BDRV_O_CHECK). */
export class OpenRefused extends Data.TaggedError("OpenRefused")<{
  readonly reason: "NotQcow2" | "Unsupported" | "Corrupt"
  readonly message: string
  readonly offset?: number
  readonly cause?: unknown
}> {}

/** Every way the internals of a check fail; index.ts turns them into CheckError. */
export type Failure = CheckAborted | OpenRefused | StorageError

export const EIO = "Input/output error"
export const EINVAL = "Invalid argument"
export const EFBIG = "File too large"
export const ENOMEM = "Cannot allocate memory"
export const ENOSPC = "No space left on device"
export const ENOTSUP = "Operation not supported"

export const abort = (strerror: string, reported?: string): Effect.Effect<never, CheckAborted> =>
  Effect.fail(new CheckAborted({ strerror, ...(reported !== undefined ? { reported } : {}) }))

/** The byte store of the image file. */
export class Io {
  constructor(readonly storage: BlockStorageShape) {}

  /** Reads `length` bytes at `offset` (zeros past the end of the file). */
  read(offset: number, length: number): Effect.Effect<Uint8Array, StorageError> {
    const buf = new Uint8Array(length)
    if (length === 0) return Effect.succeed(buf)
    return this.storage.read(offset, buf).pipe(Effect.as(buf))
  }

  write(offset: number, data: Uint8Array): Effect.Effect<void, StorageError> {
    return this.storage.write(offset, data)
  }

  flush(): Effect.Effect<void, StorageError> {
    return this.storage.flush()
  }

  size(): Effect.Effect<number, StorageError> {
    return this.storage.size()
  }

  resize(size: number): Effect.Effect<void, StorageError> {
    return this.storage.resize(size)
  }

  /** A hint: failures are ignored, as QEMU ignores failed discards of freed clusters. */
  discard(offset: number, length: number): Effect.Effect<void> {
    return this.storage.discard(offset, length).pipe(Effect.ignore)
  }
}
