/**
 * How an NBD client connection fails. Every failure reaches the caller as
 * a `StorageError` (the storage layer's one error family), whose `cause`
 * is an `NbdProtocolError` naming what the server did wrong, so a caller
 * can tell a refused export from a hung-up or misbehaving server.
 */
import { Data } from "effect"
import { StorageError, type StorageErrorReason } from "@qcow2/storage"
import { Errno } from "../protocol.js"

/** What went wrong on the wire. */
export type NbdProtocolErrorReason =
  /** The server could not be reached (connect(2) failed). */
  | "ConnectFailed"
  /** A magic number that is not NBD's: not an NBD server, or a corrupted stream. */
  | "WrongMagic"
  /** The server does not speak what this client needs (oldstyle only, no fixed newstyle, no export info). */
  | "Unsupported"
  /** The server refused an option (an unknown export, a policy). */
  | "Refused"
  /** The server closed the connection, or it broke, before a message was whole. */
  | "HungUp"
  /** A length larger than the protocol or the request allows. */
  | "Oversize"
  /** A message that breaks the protocol: an unknown handle, a chunk outside its request, a reply of the wrong kind. */
  | "Malformed"
  /** The server answered a request with an error value. */
  | "RequestFailed"
  /** The connection was closed on this side. */
  | "Closed"

/** The protocol-level cause of a failed NBD operation. */
export class NbdProtocolError extends Data.TaggedError("NbdProtocolError")<{
  readonly reason: NbdProtocolErrorReason
  readonly message: string
}> {}

/** The POSIX names of the error values a server sends (proto.md "Error values"). */
const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [Errno.EPERM]: "EPERM",
  [Errno.EIO]: "EIO",
  [Errno.ENOMEM]: "ENOMEM",
  [Errno.EINVAL]: "EINVAL",
  [Errno.ENOSPC]: "ENOSPC",
  [Errno.EOVERFLOW]: "EOVERFLOW",
  [Errno.ENOTSUP]: "ENOTSUP",
  [Errno.ESHUTDOWN]: "ESHUTDOWN"
}

/** The POSIX name of a server's error value; EINVAL for one the protocol does not define (proto.md: clients SHOULD treat unknown values as EINVAL). */
export const errnoName = (value: number): string => ERRNO_NAMES[value] ?? "EINVAL"

const reasonOfErrno = (errno: string): StorageErrorReason => {
  switch (errno) {
    case "EPERM":
      return "ReadOnly"
    case "ENOSPC":
      return "NoSpace"
    case "EINVAL":
    case "EOVERFLOW":
      return "OutOfRange"
    case "ENOTSUP":
      return "Unsupported"
    default:
      return "Io"
  }
}

/** A failure that ends the connection: every request fails with EIO, as QEMU's client fails them. */
export const connectionError = (location: string, reason: NbdProtocolErrorReason, message: string): StorageError =>
  new StorageError({ reason: reason === "Closed" ? "Closed" : "Io", message, location, errno: "EIO", cause: new NbdProtocolError({ reason, message }) })

/** The server's error reply to one request, with its errno. */
export const requestError = (location: string, operation: string, value: number, text: string | undefined, offset: number, length: number): StorageError => {
  const errno = errnoName(value)
  const message = `${operation} at ${offset}+${length} failed on the NBD server: ${text !== undefined && text !== "" ? text : errno}`
  return new StorageError({ reason: reasonOfErrno(errno), message, location, offset, length, errno, cause: new NbdProtocolError({ reason: "RequestFailed", message }) })
}

/** An error while opening, marked as the driver's whole message (QEMU prints the nbd driver's open failures without "Could not open"). */
export const openError = (e: StorageError): StorageError =>
  new StorageError({
    reason: e.reason,
    message: e.message,
    ...(e.location !== undefined ? { location: e.location } : {}),
    ...(e.errno !== undefined ? { errno: e.errno } : {}),
    driverMessage: true,
    cause: e.cause
  })
