import { FormatError } from "./errors.js"
import { MAX_SAFE_HIGH, TWO_32 } from "./bytes.js"

/**
 * Compressed cluster descriptor (qcow2.txt "Compressed Clusters Descriptor"),
 * x = 62 - (cluster_bits - 8) (QEMU's csize_shift): bits 0..x-1 host byte
 * offset, bits x..61 number of additional 512-byte sectors.
 */

/** Bit position of the sector count (QEMU's csize_shift). */
export const compressedSizeShift = (clusterBits: number): number => 62 - (clusterBits - 8)

/** Largest compressed payload, in bytes, that fits the descriptor at any host offset: 2^(cluster_bits-8) sectors minus a partial first one. */
export function maxCompressedSize(clusterBits: number): number {
  return 2 ** (clusterBits - 8) * 512 - 511
}

/**
 * Decodes a descriptor given as 32-bit halves (bits 62/63 of the high half
 * are ignored). compressedSize = nb_sectors*512 - (offset & 511), as QEMU
 * computes it. FormatError OffsetTooLarge when the offset is >= 2^53.
 */
export function decodeCompressedDescriptor(
  descriptorHigh: number,
  descriptorLow: number,
  clusterBits: number
): { hostOffset: number; compressedSize: number } {
  const hiShift = compressedSizeShift(clusterBits) - 32
  const offHi = descriptorHigh & ((1 << hiShift) - 1)
  if (offHi > MAX_SAFE_HIGH) {
    throw new FormatError("OffsetTooLarge", "compressed cluster offset does not fit in 53 bits", "l2_entry")
  }
  const sectors = ((descriptorHigh >>> hiShift) & ((1 << (clusterBits - 8)) - 1)) + 1
  const hostOffset = offHi * TWO_32 + (descriptorLow >>> 0)
  return { hostOffset, compressedSize: sectors * 512 - (descriptorLow & 511) }
}

/**
 * Builds the full 64-bit L2 entry (bit 62 set) for `byteLength` compressed
 * bytes at `hostOffset`. The additional sector count is
 * ((hostOffset + byteLength - 1) >> 9) - (hostOffset >> 9) and must fit its
 * field (DoesNotFit); the offset must be below 2^x and 2^56 (OffsetTooLarge).
 */
export function encodeCompressedDescriptor(
  hostOffset: number,
  byteLength: number,
  clusterBits: number
): { high: number; low: number } {
  const shift = compressedSizeShift(clusterBits)
  if (!Number.isSafeInteger(hostOffset) || hostOffset < 0) {
    throw new FormatError("InvalidField", `compressed host offset ${hostOffset} is not a non-negative integer`, "l2_entry")
  }
  if (hostOffset >= 2 ** Math.min(shift, 56)) {
    throw new FormatError("OffsetTooLarge", `compressed host offset ${hostOffset} does not fit the descriptor`, "l2_entry")
  }
  if (!Number.isSafeInteger(byteLength) || byteLength < 1) {
    throw new FormatError("InvalidField", `compressed length ${byteLength} must be a positive integer`, "l2_entry")
  }
  // same as ((hostOffset + byteLength - 1) >> 9) - (hostOffset >> 9), without exceeding 2^53
  const extra = Math.floor(((hostOffset % 512) + byteLength - 1) / 512)
  if (extra >= 2 ** (clusterBits - 8)) {
    throw new FormatError("DoesNotFit", `compressed length ${byteLength} at ${hostOffset} needs ${extra} additional sectors, more than the descriptor holds`, "l2_entry")
  }
  const hiShift = shift - 32
  const high = (0x40000000 | (extra << hiShift) | Math.floor(hostOffset / TWO_32)) >>> 0
  return { high, low: hostOffset >>> 0 }
}
