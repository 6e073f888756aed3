import { StorageError } from "@qcow2/storage"
import type { StorageErrorReason } from "@qcow2/storage"

const REASONS: Readonly<Record<string, StorageErrorReason>> = {
  ENOENT: "NotFound",
  ENOTDIR: "NotFound",
  EACCES: "PermissionDenied",
  EPERM: "PermissionDenied",
  EROFS: "ReadOnly"
}

const DESCRIPTIONS: Readonly<Record<string, string>> = {
  ENOENT: "no such file or directory",
  ENOTDIR: "a component of the path is not a directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  EISDIR: "is a directory",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EIO: "input/output error",
  EFBIG: "file too large",
  EMFILE: "too many open files",
  ENXIO: "no such device or address",
  EINVAL: "invalid argument",
  EBADF: "bad file descriptor"
}

/**
 * Maps a Node system error to a {@link StorageError}: ENOENT/ENOTDIR →
 * NotFound, EACCES/EPERM → PermissionDenied, EROFS → ReadOnly, anything
 * else → Io. The message names the operation, the path and the errno code,
 * which `errno` keeps (qemu-io prints its text: ENOSPC is "No space left on
 * device", not the "Input/output error" that reason Io stands for).
 */
export const fromSystemError = (
  cause: unknown,
  operation: string,
  location: string,
  offset?: number,
  length?: number
): StorageError => {
  const code = typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string"
    ? cause.code
    : undefined
  const reason = (code !== undefined ? REASONS[code] : undefined) ?? "Io"
  const detail = code === undefined
    ? String(cause instanceof Error ? cause.message : cause)
    : `${DESCRIPTIONS[code] ?? (cause instanceof Error ? cause.message : "system error")} (${code})`
  const where = offset === undefined ? "" : length === undefined ? ` at ${offset}` : ` of ${length} bytes at ${offset}`
  return new StorageError({
    reason,
    message: `${operation} ${location}${where}: ${detail}`,
    location,
    ...(code === undefined ? {} : { errno: code }),
    cause,
    ...(offset === undefined ? {} : { offset }),
    ...(length === undefined ? {} : { length })
  })
}
