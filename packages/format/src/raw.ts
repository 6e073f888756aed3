import { TWO_32, u32 } from "./bytes.js"
import { compressedSizeShift } from "./compressed.js"
import type { Geometry } from "./geometry.js"
import { readRefcount } from "./refcount.js"

/**
 * Lenient raw views of table entries, for consistency checkers (`qemu-img
 * check`) that must see, count and report the very bits the strict codecs
 * refuse: readL1Entry, readRefcountTableEntry and readRefcount throw
 * OffsetTooLarge at 2^53, and readL2Entry folds every kind of damage into
 * `Invalid`. Nothing here throws on content, and bytes past the end of a
 * buffer read as zero (a table cut short by the end of the file).
 *
 * Offsets are returned as doubles: exact below 2^53, the nearest double
 * above (such an offset lies past the end of any real file, which is all a
 * checker needs to know); `hex64` gives the exact text for messages.
 */

/** Flag and reserved bits of table entries, as masks on the high or low 32-bit half (qcow2.txt "Cluster mapping", "Host cluster management"). */
export const EntryBits = {
  /** Bit 63 of L1 and L2 entries, high half: refcount is exactly 1. */
  Copied: 0x80000000,
  /** Bit 62 of L2 entries, high half. */
  Compressed: 0x40000000,
  /** Bits 48-55 of an offset field, high half (bits 9-55 hold host offsets). */
  OffsetHigh: 0x00ffffff,
  /** Bits 9-31, low half. */
  OffsetLow: 0xfffffe00,
  /** Bits 56-62 of an L1 entry, high half. */
  L1ReservedHigh: 0x7f000000,
  /** Bits 0-8 of an L1 entry or a refcount table entry, low half. */
  ReservedLow9: 0x1ff,
  /** Bits 56-61 of a standard L2 entry, high half. */
  L2ReservedHigh: 0x3f000000,
  /** Bits 1-8 of a standard L2 entry, low half. */
  L2ReservedLow: 0x1fe,
  /** Bit 0 of a standard L2 entry: the cluster reads as zeros. */
  Zero: 1
} as const

/** A 64-bit big-endian word as its unsigned 32-bit halves. */
export interface RawWord {
  readonly hi: number
  readonly lo: number
}

/** Unsigned big-endian 32-bit value at `byteOffset`; 0 where the bytes lie past the end of `bytes`. */
export const readU32Lenient = (bytes: Uint8Array, byteOffset: number): number =>
  byteOffset >= 0 && byteOffset + 4 <= bytes.length ? u32(bytes, byteOffset) : 0

/** Unsigned big-endian 16-bit value at `byteOffset`; 0 past the end of `bytes`. */
export const readU16Lenient = (bytes: Uint8Array, byteOffset: number): number =>
  byteOffset >= 0 && byteOffset + 2 <= bytes.length ? (bytes[byteOffset]! << 8) | bytes[byteOffset + 1]! : 0

/** The 64-bit word at `byteOffset` as halves (zero past the end of `bytes`). */
export const readRawWord = (bytes: Uint8Array, byteOffset: number): RawWord => ({
  hi: readU32Lenient(bytes, byteOffset),
  lo: readU32Lenient(bytes, byteOffset + 4)
})

/** L1 entry `index` as stored. */
export const rawL1Entry = (table: Uint8Array, index: number): RawWord => readRawWord(table, index * 8)

/** Refcount table entry `index` as stored. */
export const rawRefcountTableEntry = (table: Uint8Array, index: number): RawWord => readRawWord(table, index * 8)

/** An L2 entry as stored; the bitmap word of extended L2 entries is split into its zero (bits 32-63) and allocation (bits 0-31) halves, 0 for standard entries. */
export interface RawL2Entry extends RawWord {
  readonly zeroMask: number
  readonly allocatedMask: number
}

/** L2 entry `index` (8 bytes, or 16 with extended L2) as stored. */
export function rawL2Entry(table: Uint8Array, index: number, geometry: Geometry): RawL2Entry {
  const o = index * geometry.l2EntrySize
  const ext = geometry.extendedL2
  return {
    hi: readU32Lenient(table, o),
    lo: readU32Lenient(table, o + 4),
    zeroMask: ext ? readU32Lenient(table, o + 8) : 0,
    allocatedMask: ext ? readU32Lenient(table, o + 12) : 0
  }
}

/** Bits 9-55 of an L1, standard L2 or bitmap table entry: the host offset, not range checked. */
export const rawHostOffset = (hi: number, lo: number): number =>
  (hi & EntryBits.OffsetHigh) * TWO_32 + ((lo & EntryBits.OffsetLow) >>> 0)

/** Bits 9-63 of a refcount table entry: the refcount block offset, not range checked. */
export const rawRefblockOffset = (hi: number, lo: number): number => (hi >>> 0) * TWO_32 + ((lo & EntryBits.OffsetLow) >>> 0)

/** Whether bits 9..cluster_bits-1 of an offset field are set (the offset is not cluster aligned). */
export const rawOffsetUnaligned = (lo: number, clusterSize: number): boolean => (lo & (clusterSize - 1) & EntryBits.OffsetLow) !== 0

/**
 * A compressed cluster descriptor (bits 0-61 of an L2 entry) without the
 * range checks of decodeCompressedDescriptor: the offset field may exceed
 * 2^53 and even bit 55 (with small clusters it reaches bit 60).
 * `offsetHigh`:`offsetLow` is the exact offset, for messages.
 */
export function rawCompressedDescriptor(
  hi: number,
  lo: number,
  clusterBits: number
): { readonly offsetHigh: number; readonly offsetLow: number; readonly hostOffset: number; readonly compressedSize: number } {
  const hiShift = compressedSizeShift(clusterBits) - 32
  const offsetHigh = hi & ((1 << hiShift) - 1)
  const sectors = ((hi >>> hiShift) & ((1 << (clusterBits - 8)) - 1)) + 1
  return { offsetHigh, offsetLow: lo >>> 0, hostOffset: offsetHigh * TWO_32 + (lo >>> 0), compressedSize: sectors * 512 - (lo & 511) }
}

/** Refcount `index` of a block, like readRefcount, but a 64-bit value at or above 2^53 reads as the nearest double instead of throwing. */
export function rawRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  if (refcountOrder !== 6) return readRefcount(block, index, refcountOrder)
  return u32(block, index * 8) * TWO_32 + u32(block, index * 8 + 4)
}

/** The word hi:lo in lower-case hex without prefix (C's PRIx64). */
export const hex64 = (hi: number, lo: number): string => ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16)

/** A value as C's `%#x` prints it (QEMU's messages): "0" for zero, else "0x" and lower-case hex. */
export const hexAlt = (value: number | bigint): string => (value === 0 || value === 0n ? "0" : "0x" + value.toString(16))

/**
 * The fixed 40 bytes of a snapshot table entry (qcow2.txt "Snapshots") as
 * stored, with no check: the L1 offset may be unaligned or beyond 2^53.
 */
export interface RawSnapshotHeader {
  readonly l1Offset: RawWord
  readonly l1Size: number
  readonly idSize: number
  readonly nameSize: number
  readonly vmStateSize32: number
  readonly extraDataSize: number
}

/** Reads the fixed part of the snapshot entry at `byteOffset` (zeros past the end of `bytes`). */
export const rawSnapshotHeader = (bytes: Uint8Array, byteOffset: number): RawSnapshotHeader => ({
  l1Offset: readRawWord(bytes, byteOffset),
  l1Size: readU32Lenient(bytes, byteOffset + 8),
  idSize: readU16Lenient(bytes, byteOffset + 12),
  nameSize: readU16Lenient(bytes, byteOffset + 14),
  vmStateSize32: readU32Lenient(bytes, byteOffset + 32),
  extraDataSize: readU32Lenient(bytes, byteOffset + 36)
})
