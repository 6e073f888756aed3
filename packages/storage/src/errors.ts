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
  | "Locked" // another user holds the store: a process holding a lock QEMU's file driver would refuse to share, or a browser store's writer

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
  /**
   * The message is a protocol driver's whole account of a failed open
   * (QEMU's nbd driver: "Failed to connect to '…': Connection refused"),
   * shown as it is, not in the file driver's "Could not open 'NAME':" words.
   */
  readonly driverMessage?: boolean
  readonly cause?: unknown
}> {}

/** The C library's strerror() text of the POSIX error codes stores report (Linux wording). */
const STRERROR: Readonly<Record<string, string>> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  EBADF: "Bad file descriptor",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  EMFILE: "Too many open files",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  EROFS: "Read-only file system",
  ERANGE: "Numerical result out of range",
  ENOTSUP: "Operation not supported",
  EDQUOT: "Disk quota exceeded",
  ENOMEDIUM: "No medium found"
}

/** strerror() of a POSIX error code ("ENOENT" → "No such file or directory"), as QEMU prints it; undefined when unknown. */
export const strerrorOf = (errno: string): string | undefined => STRERROR[errno]
