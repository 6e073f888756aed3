import { Cause, Data } from "effect"
import { errnoOfReason, type ImageError } from "@qcow2/image"

/**
 * A failure the CLI reports to the user: `qcow2: <message>` on stderr and
 * `exitCode`. `usage` adds qemu-img's "Try … --help" hint.
 */
export class CliFailure extends Data.TaggedError("CliFailure")<{
  readonly message: string
  readonly exitCode: number
  readonly usage?: boolean
}> {}

export const fail = (message: string, exitCode = 1): CliFailure => new CliFailure({ message, exitCode })

export const usage = (message: string): CliFailure => new CliFailure({ message, exitCode: 1, usage: true })

/** qemu-img's wording for a failed open. */
export const openFailure = (name: string, error: ImageError, exitCode = 1): CliFailure => fail(`Could not open '${name}': ${error.message}`, exitCode)

/** The C library's strerror() text of each errno the CLI prints. */
const ERRNO_TEXT = {
  EIO: "Input/output error",
  EINVAL: "Invalid argument",
  ENOTSUP: "Operation not supported",
  ENOSPC: "No space left on device",
  EDQUOT: "Disk quota exceeded",
  EFBIG: "File too large",
  EPERM: "Operation not permitted",
  EACCES: "Permission denied",
  ERANGE: "Numerical result out of range",
  ENOENT: "No such file or directory",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEDIUM: "No medium found"
} as const

export type Errno = keyof typeof ERRNO_TEXT

export const errnoText = (errno: Errno): string => ERRNO_TEXT[errno]

const isKnownErrno = (errno: string): errno is Errno => Object.hasOwn(ERRNO_TEXT, errno)

/** A Node system error as strerror() words it, when its code is one the CLI knows; else Node's own message. */
export const nodeErrorText = (error: NodeJS.ErrnoException): string =>
  error.code !== undefined && isKnownErrno(error.code) ? errnoText(error.code) : error.message

/**
 * The strerror() text qemu-io prints for a failed request: the error's own
 * errno when a lower layer knew it, else the errno of its reason.
 */
export const strerror = (error: ImageError): string => errnoText(errnoOf(error))

/** The errno QEMU would return for a failure: the error's own when a lower layer knew it, else its reason's. */
export const errnoOf = (error: ImageError): Errno =>
  error.errno !== undefined && isKnownErrno(error.errno) ? error.errno : errnoOfReason(error.reason)

/** The message of a defect or unexpected failure, for "qcow2: internal error: …". */
export const describeCause = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  if (error instanceof Error) return error.message
  if (typeof error === "object" && error !== null && "message" in error) return String((error as { message: unknown }).message)
  return String(error)
}
