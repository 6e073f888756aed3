import { StorageError } from "./errors.js"

/**
 * Argument checks shared by every backend. They return an error value (or
 * `undefined`) instead of throwing, so a backend can turn a bad argument into
 * `Effect.fail` without a try/catch on its hot path.
 *
 * Offsets, lengths and sizes are non-negative safe integers, and an access's
 * end (`offset + length`) must stay a safe integer too (DESIGN.md, "Bytes and
 * numbers": offsets fit a JS number up to 2^53 and are never rounded).
 */

/** True for a non-negative integer that a JS number represents exactly. */
export const isByteCount = (value: number): boolean =>
  Number.isSafeInteger(value) && value >= 0

/** Checks `offset` and `length` of a read, write or discard. */
export const checkRange = (
  location: string,
  operation: string,
  offset: number,
  length: number
): StorageError | undefined => {
  if (isByteCount(offset) && isByteCount(length) && offset + length <= Number.MAX_SAFE_INTEGER) {
    return undefined
  }
  return new StorageError({
    reason: "OutOfRange",
    message: `${operation}: offset ${offset} and length ${length} must be non-negative safe integers ` +
      `whose sum is at most 2^53 - 1`,
    offset,
    length,
    location
  })
}

/** Checks the new size given to `resize`. */
export const checkSize = (location: string, size: number): StorageError | undefined =>
  isByteCount(size)
    ? undefined
    : new StorageError({
      reason: "OutOfRange",
      message: `resize: size ${size} must be a non-negative safe integer`,
      offset: size,
      location
    })

/** The error a read-only store gives for a write, resize or discard. */
export const readOnlyError = (location: string, operation: string, offset?: number, length?: number): StorageError =>
  new StorageError({
    reason: "ReadOnly",
    message: `${operation}: ${location} is open read-only`,
    ...(offset === undefined ? {} : { offset }),
    ...(length === undefined ? {} : { length }),
    location
  })

/** The error an operation on a closed store gives. */
export const closedError = (location: string, operation: string): StorageError =>
  new StorageError({ reason: "Closed", message: `${operation}: ${location} is closed`, location })
