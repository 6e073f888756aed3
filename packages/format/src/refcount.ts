import { FormatError } from "./errors.js"
import { MAX_SAFE_HIGH, TWO_32, putU32, u32 } from "./bytes.js"

/**
 * Refcount block entries (qcow2.txt "Host cluster management"): width
 * 1 << refcount_order bits, big-endian for 16/32/64 bits; sub-byte entries
 * are packed LSB-first (entry 0 in bit 0 of byte 0).
 */

const checkOrder = (order: number): void => {
  if (!Number.isInteger(order) || order < 0 || order > 6) {
    throw new FormatError("InvalidField", `refcount_order must be 0..6, got ${order}`, "refcount_order")
  }
}

/** Largest storable refcount: 2^bits - 1, capped at Number.MAX_SAFE_INTEGER for 64-bit entries. */
export function maxRefcount(refcountOrder: number): number {
  checkOrder(refcountOrder)
  return refcountOrder === 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << refcountOrder) - 1
}

/** Reads refcount `index` of a block; a 64-bit value above 2^53-1 throws OffsetTooLarge. */
export function readRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  switch (refcountOrder) {
    case 0:
      return (block[index >>> 3]! >>> (index & 7)) & 1
    case 1:
      return (block[index >>> 2]! >>> ((index & 3) << 1)) & 3
    case 2:
      return (block[index >>> 1]! >>> ((index & 1) << 2)) & 15
    case 3:
      return block[index]!
    case 4: {
      const o = index << 1
      return (block[o]! << 8) | block[o + 1]!
    }
    case 5:
      return u32(block, index << 2)
    case 6: {
      const o = index * 8
      const hi = u32(block, o)
      if (hi > MAX_SAFE_HIGH) {
        throw new FormatError("OffsetTooLarge", `refcount ${index} exceeds 2^53-1`, "refcount", o)
      }
      return hi * TWO_32 + u32(block, o + 4)
    }
    default:
      throw new FormatError("InvalidField", `refcount_order must be 0..6, got ${refcountOrder}`, "refcount_order")
  }
}

/** Writes refcount `index`; DoesNotFit if `value` exceeds maxRefcount(order). */
export function writeRefcount(block: Uint8Array, index: number, refcountOrder: number, value: number): void {
  const max = maxRefcount(refcountOrder)
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new FormatError("DoesNotFit", `refcount ${value} does not fit ${1 << refcountOrder} bits`, "refcount")
  }
  switch (refcountOrder) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << refcountOrder
      const perByte = 8 >>> refcountOrder
      const byte = Math.floor(index / perByte)
      const shift = (index % perByte) * bits
      const mask = ((1 << bits) - 1) << shift
      block[byte] = (block[byte]! & ~mask) | (value << shift)
      return
    }
    case 3:
      block[index] = value
      return
    case 4: {
      const o = index << 1
      block[o] = value >>> 8
      block[o + 1] = value & 0xff
      return
    }
    case 5:
      putU32(block, index << 2, value)
      return
    case 6: {
      const o = index * 8
      putU32(block, o, Math.floor(value / TWO_32))
      putU32(block, o + 4, value >>> 0)
      return
    }
  }
}

/**
 * Refcount table entry (qcow2.txt "Refcount table entry"): bits 9-63 block
 * offset (0 = not allocated), bits 0-8 reserved. Offsets >= 2^53 throw
 * OffsetTooLarge (QEMU limits host offsets to 2^56 anyway).
 */
export function readRefcountTableEntry(table: Uint8Array, index: number): { readonly offset: number; readonly reservedBitsSet: boolean } {
  const o = index * 8
  const hi = u32(table, o)
  const lo = u32(table, o + 4)
  if (hi > MAX_SAFE_HIGH) {
    throw new FormatError("OffsetTooLarge", `refcount table entry ${index} points past 2^53`, "refcount_table_entry", o)
  }
  return { offset: hi * TWO_32 + ((lo & 0xfffffe00) >>> 0), reservedBitsSet: (lo & 0x1ff) !== 0 }
}

/** Writes a refcount table entry; the offset must be a multiple of 512. */
export function writeRefcountTableEntry(table: Uint8Array, index: number, offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 512 !== 0) {
    throw new FormatError("InvalidField", `refcount block offset ${offset} must be a non-negative multiple of 512`, "refcount_table_entry")
  }
  const o = index * 8
  putU32(table, o, Math.floor(offset / TWO_32))
  putU32(table, o + 4, offset >>> 0)
}
