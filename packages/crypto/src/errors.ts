import { Data } from "effect"

/**
 * No active LUKS key slot accepted the passphrase: the master key recovered
 * from every enabled slot failed the master-key digest check (LUKS1 spec §4.1,
 * "Recovering the master key").
 */
export class BadPassphrase extends Data.TaggedError("BadPassphrase")<{
  /** Number of enabled key slots that were tried. */
  readonly slotsTried: number
}> {
  override get message(): string {
    return `Invalid passphrase: no LUKS key slot could be unlocked (${this.slotsTried} active slot(s) tried)`
  }
}

/**
 * A cipher, mode, IV generator or hash that this package does not implement
 * (for example `serpent`, `twofish`, `cast5`, or ESSIV with a hash whose digest
 * length matches no AES key size).
 */
export class UnsupportedCipher extends Data.TaggedError("UnsupportedCipher")<{
  /** The cipher name, e.g. `"twofish"`. */
  readonly cipher: string
  /** The full cipher mode string, e.g. `"xts-plain64"`. */
  readonly mode: string
  /** The hash specification, when relevant. */
  readonly hash?: string | undefined
  /** Why it is not supported. */
  readonly reason: string
}> {
  override get message(): string {
    return `Unsupported cipher ${this.cipher} ${this.mode}${this.hash ? ` (hash ${this.hash})` : ""}: ${this.reason}`
  }
}

/**
 * The LUKS1 header or key-slot area is malformed: bad magic or version, a
 * string without NUL terminator, overlapping key slots, a key slot outside the
 * area, and the like (LUKS1 spec §2.4 and §2.5, plus QEMU's sanity checks).
 */
export class InvalidLuksHeader extends Data.TaggedError("InvalidLuksHeader")<{
  readonly reason: string
  /** Byte offset of the offending field relative to the header start, when known. */
  readonly offset?: number | undefined
}> {
  override get message(): string {
    return `Invalid LUKS header${this.offset === undefined ? "" : ` at byte ${this.offset}`}: ${this.reason}`
  }
}

/** An argument out of range: sector numbers, buffer lengths, iteration counts, key sizes. */
export class InvalidCryptoArgument extends Data.TaggedError("InvalidCryptoArgument")<{
  readonly reason: string
}> {
  override get message(): string {
    return this.reason
  }
}

/** Every error the Effect API of this package can fail with. */
export type CryptoError = BadPassphrase | UnsupportedCipher | InvalidLuksHeader | InvalidCryptoArgument
