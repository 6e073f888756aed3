import { FormatError } from "@qcow2/format"
import { ImageError } from "@qcow2/cluster"

export { asImageError, checkRange, toImageError } from "@qcow2/cluster"

/**
 * An exception thrown by a format codec while decoding what the image
 * holds: a bad magic, an unsupported version, or damage.
 */
export function fromDecodeFailure(location: string, error: unknown): ImageError {
  if (error instanceof FormatError) {
    // A virtual size past what offsets here can address: QEMU's words for a size it cannot map.
    if (error.reason === "OffsetTooLarge" && error.field === "size") return new ImageError({ reason: "Unsupported", message: "Image is too big", location, cause: error })
    // A file whose magic is not qcow2's: QEMU's qcow2_do_open words.
    if (error.reason === "BadMagic") return new ImageError({ reason: "NotQcow2", message: "Image is not in qcow2 format", location, cause: error })
    const reason = error.reason === "UnsupportedVersion" ? "Unsupported" : "Corrupt"
    return new ImageError({ reason, message: error.message, location, ...(error.offset !== undefined ? { offset: error.offset } : {}), cause: error })
  }
  return new ImageError({ reason: "Corrupt", message: error instanceof Error ? error.message : String(error), location, ...(error instanceof Error ? { cause: error } : {}) })
}
