import { Data } from "effect"

/**
 * Why a crypto operation failed. Callers can match the whole family
 * (`CryptoError`) or one `reason`.
 * - `BadPassphrase`: no active LUKS key slot accepted the passphrase: the
 *   master key recovered from every enabled slot failed the master-key digest
 *   check (LUKS1 spec §4.1, "Recovering the master key"); `slotsTried` says
 *   how many slots were tried.
 * - `UnsupportedCipher`: a cipher, mode, IV generator or hash that this
 *   package does not implement (for example `serpent`, `twofish`, `cast5`, or
 *   ESSIV with a hash whose digest length matches no AES key size); `cipher`,
 *   `mode` and `hash` name it.
 * - `InvalidLuksHeader`: the LUKS1 header or key-slot area is malformed: bad
 *   magic or version, a string without NUL terminator, overlapping key slots,
 *   a key slot outside the area, and the like (LUKS1 spec §2.4 and §2.5, plus
 *   QEMU's sanity checks); `offset` is the offending field's byte offset from
 *   the header start, when known.
 * - `InvalidArgument`: an argument out of range: sector numbers, buffer
 *   lengths, iteration counts, key sizes, a cipher used after `dispose()`.
 */
export type CryptoErrorReason = "BadPassphrase" | "UnsupportedCipher" | "InvalidLuksHeader" | "InvalidArgument"

/** Every error of this package: thrown by the synchronous kernels, failed with by its Effects. */
export class CryptoError extends Data.TaggedError("CryptoError")<{
  readonly reason: CryptoErrorReason
  readonly message: string
  /** `BadPassphrase`: number of enabled key slots that were tried. */
  readonly slotsTried?: number
  /** `UnsupportedCipher`: the cipher name, e.g. `"twofish"`. */
  readonly cipher?: string
  /** `UnsupportedCipher`: the full cipher mode string, e.g. `"xts-plain64"`. */
  readonly mode?: string
  /** `UnsupportedCipher`: the hash specification, when relevant. */
  readonly hash?: string
  /** `InvalidLuksHeader`: byte offset of the offending field from the header start, when known. */
  readonly offset?: number
}> {}

/** A `BadPassphrase` error after trying `slotsTried` active key slots. */
export const badPassphrase = (slotsTried: number): CryptoError =>
  new CryptoError({
    reason: "BadPassphrase",
    message: `Invalid passphrase: no LUKS key slot could be unlocked (${slotsTried} active slot(s) tried)`,
    slotsTried
  })

/** An `UnsupportedCipher` error for `cipher` `mode` (and `hash`), saying `why`. */
export const unsupportedCipher = (cipher: string, mode: string, why: string, hash?: string): CryptoError =>
  new CryptoError({
    reason: "UnsupportedCipher",
    message: `Unsupported cipher ${cipher} ${mode}${hash ? ` (hash ${hash})` : ""}: ${why}`,
    cipher,
    mode,
    ...(hash === undefined ? {} : { hash })
  })

/** An `InvalidLuksHeader` error saying `why`, at byte `offset` of the header when known. */
export const invalidLuksHeader = (why: string, offset?: number): CryptoError =>
  new CryptoError({
    reason: "InvalidLuksHeader",
    message: `Invalid LUKS header${offset === undefined ? "" : ` at byte ${offset}`}: ${why}`,
    ...(offset === undefined ? {} : { offset })
  })

/** An `InvalidArgument` error with `message`. */
export const invalidArgument = (message: string): CryptoError => new CryptoError({ reason: "InvalidArgument", message })

