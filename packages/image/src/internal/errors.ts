import { Effect } from "effect"
import { ImageError } from "../errors.js"
import type { ImageErrorReason } from "../errors.js"

const tagOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "_tag" in e ? String((e as { _tag: unknown })._tag) : undefined

const messageOf = (e: unknown): string =>
  typeof e === "object" && e !== null && "message" in e ? String((e as { message: unknown }).message) : String(e)

/**
 * Converts a failure of any lower layer (storage, cache, alloc, cluster,
 * compress, format) into the one ImageError family, keeping the cause.
 */
export function toImageError(error: unknown, location: string): ImageError {
  if (error instanceof ImageError) return error
  const tag = tagOf(error)
  const message = messageOf(error)
  const offset = typeof error === "object" && error !== null && "offset" in error ? (error as { offset?: number }).offset : undefined
  let reason: ImageErrorReason = "Storage"
  switch (tag) {
    case "StorageError":
      reason = (error as { reason: string }).reason === "ReadOnly" ? "ReadOnly" : "Storage"
      break
    case "ClusterError":
      reason = (error as { reason: ImageErrorReason }).reason
      break
    case "RefcountError": {
      const r = (error as { reason: string }).reason
      reason = r === "Overflow" ? "RefcountOverflow" : r === "NoSpace" ? "NoSpace" : "Corrupt"
      break
    }
    case "FormatError":
      reason = "Corrupt"
      break
    case "DecompressionError":
      reason = "Decompression"
      break
    case "CryptoError":
      reason = "Encryption"
      break
    default:
      reason = "Storage"
  }
  const errno = typeof error === "object" && error !== null && "errno" in error ? (error as { errno?: string }).errno : undefined
  return new ImageError({
    reason,
    message,
    location,
    ...(offset !== undefined ? { offset } : {}),
    ...(typeof errno === "string" ? { errno } : {}),
    cause: error
  })
}

/** Runs `effect`, presenting any failure as an ImageError of `location`. */
export const asImageError = <A, R>(effect: Effect.Effect<A, unknown, R>, location: string): Effect.Effect<A, ImageError, R> =>
  Effect.mapError(effect, (e) => toImageError(e, location))

/** An ImageError for a bad argument (offset/length outside the image...). */
export const invalidArgument = (location: string, message: string): ImageError =>
  new ImageError({ reason: "InvalidArgument", message, location })

/** Checks a guest range against the image size. */
export function checkRange(location: string, size: number, offset: number, length: number): ImageError | undefined {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return invalidArgument(location, `invalid range: offset ${offset}, length ${length}`)
  }
  if (offset + length > size) {
    return invalidArgument(location, `range ${offset}+${length} is past the end of the image (${size} bytes)`)
  }
  return undefined
}
