/**
 * LUKS1 partition header codec: "LUKS On-Disk Format Specification Version
 * 1.2.x" (cryptsetup), §2.4 "Partition header" and §2.5 "Key slots".
 * All integers are big-endian. Pure functions, no Effect.
 *
 * | offset | size | field                 |
 * |--------|------|-----------------------|
 * | 0      | 6    | magic "LUKS\xba\xbe"  |
 * | 6      | 2    | version (1)           |
 * | 8      | 32   | cipher-name           |
 * | 40     | 32   | cipher-mode           |
 * | 72     | 32   | hash-spec             |
 * | 104    | 4    | payload-offset (sectors) |
 * | 108    | 4    | key-bytes             |
 * | 112    | 20   | mk-digest             |
 * | 132    | 32   | mk-digest-salt        |
 * | 164    | 4    | mk-digest-iter        |
 * | 168    | 40   | uuid                  |
 * | 208    | 48×8 | key slots             |
 *
 * Key slot: active u32 (0x00AC71F3 enabled, 0x0000DEAD disabled), iterations
 * u32, salt 32 bytes, key-material-offset u32 (sectors), stripes u32.
 */
import { invalidLuksHeader } from "./errors.js"

const LUKS_MAGIC: Uint8Array = new Uint8Array([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])
/** The LUKS header version this codec reads and writes (LUKS1). */
export const LUKS_VERSION = 1
/** Size of the LUKS1 partition header with its 8 key slots. */
export const LUKS_HEADER_SIZE = 592
const LUKS_NUM_KEY_SLOTS = 8
/** Bytes of the master-key digest (LUKS1 spec: mk-digest, 20). */
export const LUKS_DIGEST_SIZE = 20
/** Bytes of the PBKDF2 salts (master-key digest and key slots). */
export const LUKS_SALT_SIZE = 32
/** Anti-forensic stripes per key slot that QEMU and cryptsetup write. */
export const LUKS_STRIPES = 4000
/** LUKS sector size in bytes (offsets in the header count these). */
export const LUKS_SECTOR_SIZE = 512
const LUKS_KEY_ENABLED = 0x00ac71f3
const LUKS_KEY_DISABLED = 0x0000dead
/**
 * The first key material starts 4096 bytes into the header and every slot's
 * material is rounded up to 4096 bytes (8 sectors); this is what cryptsetup and
 * QEMU do (crypto/block-luks.c, QCRYPTO_BLOCK_LUKS_KEY_SLOT_OFFSET), not the
 * spec's own 1.2 alignment example.
 */
const LUKS_ALIGN_SECTORS = 8
/** QEMU's minimum PBKDF2 iteration counts for key slots and the master-key digest. */
export const LUKS_MIN_ITERATIONS = 1000

const STRING_FIELD = 32
const UUID_FIELD = 40

/** One of the 8 key slots (spec §2.5). */
export interface LuksKeySlot {
  /** Active flag: 0x00AC71F3 (true) or 0x0000DEAD (false). */
  readonly active: boolean
  /** PBKDF2 iterations for the passphrase. */
  readonly iterations: number
  /** 32-byte PBKDF2 salt. */
  readonly salt: Uint8Array
  /** Start of the key material, in 512-byte sectors from the header start. */
  readonly keyMaterialOffset: number
  /** Number of anti-forensic stripes (4000). */
  readonly stripes: number
}

/** A decoded LUKS1 partition header (spec §2.4). */
export interface LuksHeader {
  readonly version: number
  /** e.g. `"aes"`. */
  readonly cipherName: string
  /** e.g. `"xts-plain64"`. */
  readonly cipherMode: string
  /** e.g. `"sha256"`: the PBKDF2 and AF hash. */
  readonly hashSpec: string
  /** Start of the payload in sectors; in qcow2 it is the length of the LUKS area (data lives in clusters). */
  readonly payloadOffset: number
  /** Master key length in bytes. */
  readonly keyBytes: number
  /** First 20 bytes of PBKDF2(master key, mkDigestSalt, mkDigestIterations). */
  readonly mkDigest: Uint8Array
  readonly mkDigestSalt: Uint8Array
  readonly mkDigestIterations: number
  /** UUID text, at most 39 characters. */
  readonly uuid: string
  readonly keySlots: ReadonlyArray<LuksKeySlot>
}

/** Number of sectors a key slot's material occupies: key bytes × stripes, rounded up to whole sectors. */
export const keyMaterialSectors = (keyBytes: number, stripes: number): number =>
  Math.ceil((keyBytes * stripes) / LUKS_SECTOR_SIZE)

/**
 * QEMU/cryptsetup layout for a new header: the 592-byte header padded to 4096
 * bytes, then 8 key-material regions of `keyBytes * stripes` bytes each,
 * rounded up to 4096 bytes; payload right after. Offsets in sectors.
 * (aes-256-xts: 64 × 4000 = 256000 bytes → 504 sectors per slot, payload at 4040.)
 */
export const luksLayout = (
  keyBytes: number,
  stripes: number = LUKS_STRIPES
): { readonly keyMaterialOffsets: ReadonlyArray<number>; readonly payloadOffset: number } => {
  const slotSectors =
    Math.ceil(keyMaterialSectors(keyBytes, stripes) / LUKS_ALIGN_SECTORS) * LUKS_ALIGN_SECTORS
  const keyMaterialOffsets = Array.from({ length: LUKS_NUM_KEY_SLOTS }, (_, i) => LUKS_ALIGN_SECTORS + i * slotSectors)
  return { keyMaterialOffsets, payloadOffset: LUKS_ALIGN_SECTORS + LUKS_NUM_KEY_SLOTS * slotSectors }
}

const readString = (bytes: Uint8Array, offset: number, size: number, name: string): string => {
  const field = bytes.subarray(offset, offset + size)
  const nul = field.indexOf(0)
  if (nul < 0) throw invalidLuksHeader(`${name} is not NUL-terminated`, offset)
  let s = ""
  for (let i = 0; i < nul; i++) {
    const c = field[i]!
    if (c < 0x20 || c > 0x7e) throw invalidLuksHeader(`${name} contains a non-ASCII byte`, offset + i)
    s += String.fromCharCode(c)
  }
  return s
}

const writeString = (bytes: Uint8Array, offset: number, size: number, value: string, name: string): void => {
  if (value.length >= size) throw invalidLuksHeader(`${name} "${value}" does not fit in ${size - 1} bytes`, offset)
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i)
    if (c < 0x20 || c > 0x7e) throw invalidLuksHeader(`${name} "${value}" is not printable ASCII`, offset)
    bytes[offset + i] = c
  }
}

/**
 * Decode the first 592 bytes of a LUKS1 header and run the sanity checks QEMU
 * applies before trusting it (crypto/block-luks.c `check_header`): magic,
 * version 1, NUL-terminated strings, payload not overlapping the header,
 * non-zero master-key iterations, valid slot states, non-zero iterations for
 * enabled slots, key material after the header, inside the payload offset and
 * not overlapping other slots, and a bounded key size and stripe count.
 * Throws a {@link CryptoError} of reason `InvalidLuksHeader`.
 */
export const decodeLuksHeader = (bytes: Uint8Array): LuksHeader => {
  if (bytes.length < LUKS_HEADER_SIZE) {
    throw invalidLuksHeader(`header needs ${LUKS_HEADER_SIZE} bytes, got ${bytes.length}`)
  }
  for (let i = 0; i < LUKS_MAGIC.length; i++) {
    if (bytes[i] !== LUKS_MAGIC[i]) throw invalidLuksHeader("bad magic (not a LUKS volume)", 0)
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, LUKS_HEADER_SIZE)
  const version = view.getUint16(6)
  if (version !== LUKS_VERSION) throw invalidLuksHeader(`LUKS version ${version} is not supported`, 6)
  const cipherName = readString(bytes, 8, STRING_FIELD, "cipher-name")
  const cipherMode = readString(bytes, 40, STRING_FIELD, "cipher-mode")
  const hashSpec = readString(bytes, 72, STRING_FIELD, "hash-spec")
  const payloadOffset = view.getUint32(104)
  const keyBytes = view.getUint32(108)
  const mkDigest = bytes.slice(112, 132)
  const mkDigestSalt = bytes.slice(132, 164)
  const mkDigestIterations = view.getUint32(164)
  const uuidField = bytes.subarray(168, 168 + UUID_FIELD)
  const uuidEnd = uuidField.indexOf(0)
  let uuid = ""
  for (let i = 0; i < (uuidEnd < 0 ? UUID_FIELD : uuidEnd); i++) uuid += String.fromCharCode(uuidField[i]!)

  if (keyBytes === 0 || keyBytes > 256) throw invalidLuksHeader(`key-bytes ${keyBytes} out of range`, 108)
  if (payloadOffset < LUKS_ALIGN_SECTORS) {
    throw invalidLuksHeader("payload offset overlaps the LUKS header", 104)
  }
  if (mkDigestIterations === 0) throw invalidLuksHeader("master key iteration count is zero", 164)

  const keySlots: Array<LuksKeySlot> = []
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const o = 208 + i * 48
    const state = view.getUint32(o)
    if (state !== LUKS_KEY_ENABLED && state !== LUKS_KEY_DISABLED) {
      throw invalidLuksHeader(`key slot ${i} state 0x${state.toString(16)} is corrupted`, o)
    }
    const slot: LuksKeySlot = {
      active: state === LUKS_KEY_ENABLED,
      iterations: view.getUint32(o + 4),
      salt: bytes.slice(o + 8, o + 40),
      keyMaterialOffset: view.getUint32(o + 40),
      stripes: view.getUint32(o + 44)
    }
    if (slot.active && slot.iterations === 0) {
      throw invalidLuksHeader(`key slot ${i} iteration count is zero`, o + 4)
    }
    if (slot.stripes === 0 || slot.stripes > 65536) {
      throw invalidLuksHeader(`key slot ${i} stripe count ${slot.stripes} out of range`, o + 44)
    }
    if (slot.keyMaterialOffset < LUKS_ALIGN_SECTORS) {
      throw invalidLuksHeader(`key slot ${i} overlaps the LUKS header`, o + 40)
    }
    if (slot.keyMaterialOffset + keyMaterialSectors(keyBytes, slot.stripes) > payloadOffset) {
      throw invalidLuksHeader(`key slot ${i} overlaps the encrypted payload`, o + 40)
    }
    keySlots.push(slot)
  }
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const a = keySlots[i]!
    const aEnd = a.keyMaterialOffset + keyMaterialSectors(keyBytes, a.stripes)
    for (let j = i + 1; j < LUKS_NUM_KEY_SLOTS; j++) {
      const b = keySlots[j]!
      const bEnd = b.keyMaterialOffset + keyMaterialSectors(keyBytes, b.stripes)
      if (a.keyMaterialOffset < bEnd && b.keyMaterialOffset < aEnd) {
        throw invalidLuksHeader(`key slots ${i} and ${j} overlap`, 208 + j * 48 + 40)
      }
    }
  }
  return {
    version,
    cipherName,
    cipherMode,
    hashSpec,
    payloadOffset,
    keyBytes,
    mkDigest,
    mkDigestSalt,
    mkDigestIterations,
    uuid,
    keySlots
  }
}

const checkLength = (value: Uint8Array, length: number, name: string): void => {
  if (value.length !== length) throw invalidLuksHeader(`${name} must be ${length} bytes, got ${value.length}`)
}

/** Encode a header into 592 bytes (spec §2.4). Throws a {@link CryptoError} of reason `InvalidLuksHeader` on fields that do not fit. */
export const encodeLuksHeader = (header: LuksHeader): Uint8Array => {
  const bytes = new Uint8Array(LUKS_HEADER_SIZE)
  const view = new DataView(bytes.buffer)
  bytes.set(LUKS_MAGIC, 0)
  view.setUint16(6, header.version)
  writeString(bytes, 8, STRING_FIELD, header.cipherName, "cipher-name")
  writeString(bytes, 40, STRING_FIELD, header.cipherMode, "cipher-mode")
  writeString(bytes, 72, STRING_FIELD, header.hashSpec, "hash-spec")
  view.setUint32(104, header.payloadOffset)
  view.setUint32(108, header.keyBytes)
  checkLength(header.mkDigest, LUKS_DIGEST_SIZE, "mk-digest")
  bytes.set(header.mkDigest, 112)
  checkLength(header.mkDigestSalt, LUKS_SALT_SIZE, "mk-digest-salt")
  bytes.set(header.mkDigestSalt, 132)
  view.setUint32(164, header.mkDigestIterations)
  writeString(bytes, 168, UUID_FIELD, header.uuid, "uuid")
  if (header.keySlots.length !== LUKS_NUM_KEY_SLOTS) {
    throw invalidLuksHeader(`a LUKS1 header has ${LUKS_NUM_KEY_SLOTS} key slots, got ${header.keySlots.length}`)
  }
  header.keySlots.forEach((slot, i) => {
    const o = 208 + i * 48
    view.setUint32(o, slot.active ? LUKS_KEY_ENABLED : LUKS_KEY_DISABLED)
    view.setUint32(o + 4, slot.iterations)
    checkLength(slot.salt, LUKS_SALT_SIZE, `key slot ${i} salt`)
    bytes.set(slot.salt, o + 8)
    view.setUint32(o + 40, slot.keyMaterialOffset)
    view.setUint32(o + 44, slot.stripes)
  })
  return bytes
}
