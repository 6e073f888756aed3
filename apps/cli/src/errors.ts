import { Cause, Data } from "effect"
import type { ImageError } from "@qcow2/image"

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

/** Text of an image error, with the failing offset when it helps. */
export const describeImageError = (error: ImageError): string => error.message

/** qemu-img's wording for a failed open. */
export const openFailure = (name: string, error: ImageError, exitCode = 1): CliFailure =>
  fail(`Could not open '${name}': ${describeImageError(error)}`, exitCode)

/** The message of a defect or unexpected failure, for "qcow2: internal error: …". */
export const describeCause = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  if (error instanceof Error) return error.message
  if (typeof error === "object" && error !== null && "message" in error) return String((error as { message: unknown }).message)
  return String(error)
}
