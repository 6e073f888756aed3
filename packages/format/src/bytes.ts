import { FormatError } from "./errors.js"

/** 2^32 */
export const TWO_32 = 4294967296
/** Largest high half (of a 64-bit value) that keeps the value below 2^53. */
export const MAX_SAFE_HIGH = 0x1fffff

/** Big-endian unsigned 32-bit read at `o` (no bounds check: caller ensures). */
export const u32 = (b: Uint8Array, o: number): number =>
  ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0

export const u16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!

export const putU32 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = v >>> 24
  b[o + 1] = (v >>> 16) & 0xff
  b[o + 2] = (v >>> 8) & 0xff
  b[o + 3] = v & 0xff
}

export const putU16 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = (v >>> 8) & 0xff
  b[o + 1] = v & 0xff
}

/** Reads an unsigned 64-bit big-endian number; throws OffsetTooLarge above 2^53-1. */
export const u64 = (b: Uint8Array, o: number, field: string): number => {
  const hi = u32(b, o)
  if (hi > MAX_SAFE_HIGH) {
    throw new FormatError("OffsetTooLarge", `${field} does not fit in 53 bits`, field, o)
  }
  return hi * TWO_32 + u32(b, o + 4)
}

export const u64big = (b: Uint8Array, o: number): bigint =>
  (BigInt(u32(b, o)) << 32n) | BigInt(u32(b, o + 4))

/** Writes a non-negative safe integer as unsigned 64-bit big-endian. */
export const putU64 = (b: Uint8Array, o: number, v: number, field: string): void => {
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new FormatError("InvalidField", `${field} must be a non-negative safe integer, got ${v}`, field)
  }
  putU32(b, o, Math.floor(v / TWO_32))
  putU32(b, o + 4, v >>> 0)
}

export const putU64big = (b: Uint8Array, o: number, v: bigint): void => {
  const x = BigInt.asUintN(64, v)
  putU32(b, o, Number(x >> 32n))
  putU32(b, o + 4, Number(x & 0xffffffffn))
}

export const checkU32 = (v: number, field: string): void => {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new FormatError("InvalidField", `${field} must be an unsigned 32-bit integer, got ${v}`, field)
  }
}

export const checkU16 = (v: number, field: string): void => {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) {
    throw new FormatError("InvalidField", `${field} must be an unsigned 16-bit integer, got ${v}`, field)
  }
}

export const align8 = (n: number): number => (n + 7) & ~7

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8")

export const utf8 = (s: string): Uint8Array => encoder.encode(s)
export const fromUtf8 = (b: Uint8Array): string => decoder.decode(b)

export const need = (b: Uint8Array, offset: number, length: number, field: string): void => {
  if (offset < 0 || length < 0 || offset + length > b.length) {
    throw new FormatError(
      "Truncated",
      `${field} needs bytes [${offset}, ${offset + length}) but only ${b.length} are available`,
      field,
      offset
    )
  }
}
