/** 2^32 */
export const TWO_32 = 4294967296

/** Big-endian unsigned 32-bit read; bytes past the end of `b` read as zero. */
export const be32 = (b: Uint8Array, o: number): number =>
  o + 4 <= b.length ? ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0 : 0

/** Big-endian unsigned 16-bit read; zero past the end of `b`. */
export const be16 = (b: Uint8Array, o: number): number => (o + 2 <= b.length ? (b[o]! << 8) | b[o + 1]! : 0)

/** The 64-bit word hi:lo in lower-case hex without prefix (C's PRIx64). */
export const hex64 = (hi: number, lo: number): string => ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16)

/** C's "%#" PRIx64: "0x"-prefixed hex, plain "0" for zero. */
export const altHex = (text: string): string => (text === "0" ? "0" : "0x" + text)

/** A non-negative integer (exact below 2^53) in hex. */
export const hexNum = (n: number): string => n.toString(16)
