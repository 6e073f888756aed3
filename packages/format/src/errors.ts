/** Why a decoder (or encoder) rejected its input. */
export type FormatErrorReason =
  | "BadMagic"
  | "UnsupportedVersion"
  | "InvalidField"
  | "Truncated"
  | "OffsetTooLarge"
  | "DoesNotFit"

/**
 * Thrown by the codecs of this package. The image layer catches it and turns
 * it into a typed Effect error; `field` names the on-disk field and `offset`
 * the byte position (within the buffer given to the codec) where applicable.
 */
export class FormatError extends Error {
  readonly _tag = "FormatError"
  readonly reason: FormatErrorReason
  readonly field: string | undefined
  readonly offset: number | undefined
  constructor(reason: FormatErrorReason, message: string, field?: string, offset?: number) {
    super(message)
    this.name = "FormatError"
    this.reason = reason
    this.field = field
    this.offset = offset
  }
}
