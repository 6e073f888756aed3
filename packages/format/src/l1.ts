import { FormatError } from "./errors.js"
import { MAX_SAFE_HIGH, TWO_32, putU32, u32 } from "./bytes.js"
import type { Geometry } from "./geometry.js"

/**
 * One L1 table entry (qcow2.txt "Cluster mapping", L1 table entry):
 * bits 9-55 L2 table offset (0 = unallocated), 56-62 reserved, 63 COPIED.
 */
export interface L1Entry {
  readonly l2Offset: number
  readonly copied: boolean
  /** Any of bits 0-8 or 56-62 set. */
  readonly reservedBitsSet: boolean
}

const OFFSET_HIGH_MASK = 0x00ffffff
const RESERVED_HIGH_MASK = 0x7f000000

/** Reads entry `index` (8 bytes each); FormatError OffsetTooLarge if the offset is >= 2^53. */
export function readL1Entry(table: Uint8Array, index: number): L1Entry {
  const o = index * 8
  const hi = u32(table, o)
  const lo = u32(table, o + 4)
  const offHi = hi & OFFSET_HIGH_MASK
  if (offHi > MAX_SAFE_HIGH) {
    throw new FormatError("OffsetTooLarge", `L1 entry ${index} points past 2^53`, "l1_entry", o)
  }
  return {
    l2Offset: offHi * TWO_32 + ((lo & ~0x1ff) >>> 0),
    copied: (hi & 0x80000000) !== 0,
    reservedBitsSet: (lo & 0x1ff) !== 0 || (hi & RESERVED_HIGH_MASK) !== 0
  }
}

/** Writes entry `index`; the offset must be 512-byte aligned (cluster aligned in practice) and below 2^56. */
export function writeL1Entry(table: Uint8Array, index: number, l2Offset: number, copied: boolean): void {
  if (!Number.isSafeInteger(l2Offset) || l2Offset < 0 || l2Offset % 512 !== 0) {
    throw new FormatError("InvalidField", `L2 offset ${l2Offset} must be a non-negative multiple of 512`, "l1_entry")
  }
  const o = index * 8
  const hi = Math.floor(l2Offset / TWO_32)
  putU32(table, o, (hi | (copied ? 0x80000000 : 0)) >>> 0)
  putU32(table, o + 4, l2Offset >>> 0)
}

/** Number of L1 entries needed to map `virtualSize` bytes (QEMU's size_to_l1). */
export function l1EntriesFor(virtualSize: number, geometry: Geometry): number {
  return Math.ceil(virtualSize / 2 ** (geometry.clusterBits + geometry.l2Bits))
}
