import { type CryptoError, unsupportedCipher } from "./errors.js"

/**
 * Hash algorithms LUKS1 names in `hash-spec` (LUKS1 spec §2.4 and the
 * cryptsetup hash table) and that qemu-img 7.2 accepts for `encrypt.hash-alg`
 * and `encrypt.ivgen-hash-alg`. All of them are implemented, by node:crypto and
 * by @noble/hashes.
 */
export type HashName = "md5" | "sha1" | "sha224" | "sha256" | "sha384" | "sha512" | "ripemd160"

/** Digest length in bytes of each supported hash. */
export const HASH_DIGEST_LENGTH: Readonly<Record<HashName, number>> = {
  md5: 16,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  ripemd160: 20
}

/** True for the hash names in {@link HashName}. */
export const isHashName = (s: string): s is HashName => Object.prototype.hasOwnProperty.call(HASH_DIGEST_LENGTH, s)

/**
 * Block cipher modes. `xts` and `cbc` are what disk encryption uses; `ecb` and
 * `ctr` are accepted by qemu-img for LUKS too (ECB ignores the IV; CTR uses the
 * IV as a 128-bit big-endian counter block incremented per 16-byte block, as
 * nettle, gcrypt and OpenSSL do).
 */
export type CipherModeName = "xts" | "cbc" | "ecb" | "ctr"

/**
 * IV generators (QEMU crypto/ivgen-*.c, dm-crypt):
 * - `plain`: sector number, low 32 bits, little-endian, zero-padded to 16 bytes;
 * - `plain64`: sector number as 64-bit little-endian, zero-padded;
 * - `essiv`: AES-ECB encryption of the plain64 block with key H(master key).
 */
export type IvGenName = "plain" | "plain64" | "essiv"

/** AES key sizes in bits. */
export type AesKeyBits = 128 | 192 | 256

/**
 * A fully resolved sector cipher: AES of `keyBits`, `mode`, and IV generator.
 * The data key is `keyBits / 8` bytes (twice that for XTS, whose second half
 * is the tweak key, IEEE 1619 §5.1).
 */
export interface CipherSpec {
  readonly cipher: "aes"
  readonly keyBits: AesKeyBits
  readonly mode: CipherModeName
  readonly ivgen: IvGenName
  /** Hash for ESSIV; for plain/plain64 QEMU and dm-crypt ignore it but keep it in the mode string. */
  readonly ivgenHash?: HashName | undefined
}

/** Master key length in bytes (`key-bytes` in the LUKS header) for a spec. */
export const specKeyBytes = (spec: CipherSpec): number => (spec.keyBits / 8) * (spec.mode === "xts" ? 2 : 1)

/** The LUKS `cipher-name` string for a spec, always `"aes"`. */
export const specCipherName = (spec: CipherSpec): string => spec.cipher

/** The LUKS `cipher-mode` string, e.g. `"xts-plain64"` or `"cbc-essiv:sha256"`. */
export const specCipherMode = (spec: CipherSpec): string =>
  `${spec.mode}-${spec.ivgen}${spec.ivgenHash === undefined ? "" : `:${spec.ivgenHash}`}`

/** Human-readable name in cryptsetup/QEMU style, e.g. `"aes-256-xts-plain64"`. */
export const specDescription = (spec: CipherSpec): string =>
  `${spec.cipher}-${spec.keyBits}-${specCipherMode(spec)}`

const CIPHER_MODES: ReadonlyArray<CipherModeName> = ["xts", "cbc", "ecb", "ctr"]
const IVGENS: ReadonlyArray<IvGenName> = ["plain", "plain64", "essiv"]
/** Ciphers QEMU knows for LUKS but this package does not implement. */
const KNOWN_UNSUPPORTED_CIPHERS = new Set(["serpent", "twofish", "cast5", "sm4"])

/**
 * Resolve LUKS header strings to a {@link CipherSpec} the way QEMU's
 * `qcrypto_block_luks_parse_header` does: `cipher-mode` is
 * `<mode>-<ivgen>[:<ivhash>]`; the AES key size comes from `key-bytes`
 * (halved for XTS); ESSIV requires an IV hash whose digest length is an AES key
 * size (dm-crypt's quirk: the ESSIV cipher is AES with a key as long as the
 * digest, e.g. AES-256 for sha256 even with AES-128 data encryption).
 */
export const resolveLuksCipher = (cipherName: string, cipherMode: string, keyBytes: number): CipherSpec | CryptoError => {
  const resolved = resolveCipher(cipherName, cipherMode, keyBytes)
  return typeof resolved === "string" ? unsupportedCipher(cipherName, cipherMode, resolved) : resolved
}

/** {@link resolveLuksCipher}, with the reason a spec is unsupported as a string. */
const resolveCipher = (cipherName: string, cipherMode: string, keyBytes: number): CipherSpec | string => {
  const dash = cipherMode.indexOf("-")
  if (dash < 0) return "cipher mode is not of the form <mode>-<ivgen>[:<hash>]"
  const modeName = cipherMode.slice(0, dash)
  const rest = cipherMode.slice(dash + 1)
  const colon = rest.indexOf(":")
  const ivgenName = colon < 0 ? rest : rest.slice(0, colon)
  const ivHashName = colon < 0 ? undefined : rest.slice(colon + 1)
  if (cipherName !== "aes") {
    return KNOWN_UNSUPPORTED_CIPHERS.has(cipherName)
      ? "only AES is implemented (serpent, twofish, cast5 and sm4 are not)"
      : "unknown cipher"
  }
  if (!(CIPHER_MODES as ReadonlyArray<string>).includes(modeName)) return `unknown cipher mode ${modeName}`
  const mode = modeName as CipherModeName
  if (!(IVGENS as ReadonlyArray<string>).includes(ivgenName)) return `unknown IV generator ${ivgenName}`
  const ivgen = ivgenName as IvGenName
  if (ivHashName !== undefined && !isHashName(ivHashName)) return `unknown IV generator hash ${ivHashName}`
  const ivgenHash = ivHashName as HashName | undefined
  const aesBytes = mode === "xts" ? keyBytes / 2 : keyBytes
  if (aesBytes !== 16 && aesBytes !== 24 && aesBytes !== 32) {
    return `AES with ${keyBytes} key bytes is not possible in ${mode} mode`
  }
  const spec: CipherSpec = { cipher: "aes", keyBits: (aesBytes * 8) as AesKeyBits, mode, ivgen, ivgenHash }
  return checkEssiv(spec) ?? spec
}

/** Why a spec's ESSIV settings are unusable, or undefined when fine. */
const checkEssiv = (spec: CipherSpec): string | undefined => {
  if (spec.ivgen !== "essiv") return undefined
  if (spec.ivgenHash === undefined) return "ESSIV needs an IV generator hash (essiv:<hash>)"
  const digest = HASH_DIGEST_LENGTH[spec.ivgenHash]
  if (digest !== 16 && digest !== 24 && digest !== 32) {
    return `no AES cipher with a ${digest}-byte key for ESSIV with ${spec.ivgenHash}`
  }
  return undefined
}

/** Options naming a spec the way qemu-img's `encrypt.*` options do. */
export interface CipherSpecOptions {
  /** `aes-128`, `aes-192` or `aes-256` (default `aes-256`). */
  readonly cipherAlg?: string | undefined
  /** `xts`, `cbc`, `ecb` or `ctr` (default `xts`). */
  readonly cipherMode?: string | undefined
  /** `plain`, `plain64` or `essiv` (default `plain64`). */
  readonly ivgenAlg?: string | undefined
  /** Hash for ESSIV (default `sha256` when ivgen is essiv). */
  readonly ivgenHashAlg?: string | undefined
}

/**
 * Build a {@link CipherSpec} from qemu-img style option values with QEMU's
 * defaults (aes-256, xts, plain64; ESSIV hash sha256). `serpent-*`,
 * `twofish-*`, `cast5-128` give a {@link CryptoError} of reason `UnsupportedCipher`.
 */
export const specFromOptions = (options: CipherSpecOptions): CipherSpec | CryptoError => {
  const cipherAlg = options.cipherAlg ?? "aes-256"
  const modeName = options.cipherMode ?? "xts"
  const ivgenName = options.ivgenAlg ?? "plain64"
  const ivHashName = options.ivgenHashAlg ?? (ivgenName === "essiv" ? "sha256" : undefined)
  const modeString = `${modeName}-${ivgenName}${ivHashName === undefined ? "" : `:${ivHashName}`}`
  const m = /^([a-z0-9]+)-(\d+)$/.exec(cipherAlg)
  if (m === null) {
    return unsupportedCipher(cipherAlg, modeString, "unknown cipher algorithm")
  }
  const bits = Number(m[2])
  if (m[1] !== "aes" || (bits !== 128 && bits !== 192 && bits !== 256)) {
    return unsupportedCipher(cipherAlg, modeString, "only aes-128, aes-192 and aes-256 are implemented")
  }
  const keyBytes = (bits / 8) * (modeName === "xts" ? 2 : 1)
  const resolved = resolveCipher("aes", modeString, keyBytes)
  return typeof resolved === "string" ? unsupportedCipher(cipherAlg, modeString, resolved) : resolved
}

/** The spec of legacy qcow2 encryption (crypt_method 1): AES-128-CBC, plain64 IVs. */
export const LEGACY_AES_SPEC: CipherSpec = { cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "plain64" }
