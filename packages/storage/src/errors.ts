import { Data } from "effect"

/**
 * Why a storage operation failed. Callers can match the whole family
 * (`StorageError`) or one `reason`.
 */
export type StorageErrorReason =
  | "NotFound"
  | "PermissionDenied"
  | "ReadOnly"
  | "OutOfRange"
  | "Io"
  | "RemoteChanged"
  | "Unsupported"
  | "Closed"
  | "NoSpace" // the store is full (a browser's storage quota, ENOSPC)
  | "Locked" // another user holds the store (a writer, or a reader that refuses to share)

/** A failure of the byte store underneath an image (file, memory, HTTP, IndexedDB). */
export class StorageError extends Data.TaggedError("StorageError")<{
  readonly reason: StorageErrorReason
  readonly message: string
  /** Where the failing operation started, when it had a position. */
  readonly offset?: number
  readonly length?: number
  /** Path, URL or name of the store. */
  readonly location?: string
  /** The POSIX error code of a failed system call ("ENOSPC"), when the backend has one. */
  readonly errno?: string
  readonly cause?: unknown
}> {}
