import { FormatError } from "@qcow2/format"
import { ImageError } from "@qcow2/cluster"

export { asImageError, toImageError } from "@qcow2/cluster"

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

/**
 * An exception thrown by a format codec while decoding what the image
 * holds: a bad magic, an unsupported version, or damage.
 */
export function fromDecodeFailure(location: string, error: unknown): ImageError {
  if (error instanceof FormatError) {
    const reason = error.reason === "BadMagic" ? "NotQcow2" : error.reason === "UnsupportedVersion" ? "Unsupported" : "Corrupt"
    return new ImageError({ reason, message: error.message, location, ...(error.offset !== undefined ? { offset: error.offset } : {}), cause: error })
  }
  return new ImageError({ reason: "Corrupt", message: error instanceof Error ? error.message : String(error), location, ...(error instanceof Error ? { cause: error } : {}) })
}
