import { FormatError } from "./errors.js"
import { MAX_SAFE_HIGH, TWO_32, putU32, u32 } from "./bytes.js"
import { decodeCompressedDescriptor, encodeCompressedDescriptor } from "./compressed.js"
import type { Geometry } from "./geometry.js"

/**
 * A decoded L2 entry (qcow2.txt "Cluster mapping" and "Extended L2 Entries").
 *
 * - Unallocated: standard entry with offset 0 and COPIED clear (read the backing file or zeros).
 * - Zero: standard entry with bit 0 set (reads zeros); hostOffset 0 = no preallocation.
 * - Normal: standard data cluster (hostOffset 0 with COPIED is cluster 0 of an external data file;
 *   without one, QEMU reads such an entry as unallocated: see readL2Entry's `dataFile`).
 * - Compressed: byte offset and size (nb_sectors*512 - (offset & 511), as QEMU computes).
 *   A COPIED flag or a non-zero subcluster bitmap on a compressed entry is damage that
 *   QEMU's I/O ignores (qcow2_get_cluster_type looks at bit 62 first) and only `check`
 *   reports: such an entry decodes as Compressed, and a checker reads the raw words.
 * - Subclusters: every non-compressed extended entry; bit i of allocatedMask means
 *   subcluster i reads from hostOffset + i*subclusterSize, bit i of zeroMask reads zeros.
 * - Invalid: an entry no valid image contains; `damage` says which kind (L2EntryDamage),
 *   `reason` in words, `raw` is the first 64-bit word.
 */
export type L2Entry =
  | { readonly _tag: "Unallocated" }
  | { readonly _tag: "Zero"; readonly hostOffset: number; readonly copied: boolean }
  | { readonly _tag: "Normal"; readonly hostOffset: number; readonly copied: boolean }
  | { readonly _tag: "Compressed"; readonly hostOffset: number; readonly compressedSize: number }
  | {
      readonly _tag: "Subclusters"
      readonly hostOffset: number
      readonly copied: boolean
      readonly allocatedMask: number
      readonly zeroMask: number
    }
  | { readonly _tag: "Invalid"; readonly damage: L2EntryDamage; readonly reason: string; readonly raw: bigint }

/**
 * What makes an L2 entry Invalid, grouped by how QEMU 7.2 treats it:
 * - SubclusterBitmap: allocated and zero bits overlap, or subclusters are allocated
 *   without a host cluster (qcow2_get_subcluster_type's QCOW2_SUBCLUSTER_INVALID,
 *   reported as "Invalid cluster entry found").
 * - Unaligned: the host offset is not cluster aligned ("Cluster allocation offset …
 *   unaligned").
 * - ReservedBits: bits 56-61 or 1-8 set (QEMU's I/O ignores them, as readL2EntryForIo does; check reports them).
 * - OffsetTooLarge: an offset at or above 2^53, or a compressed offset past bit 55.
 * When several apply, the first in this order is given, QEMU's order of checks.
 */
export type L2EntryDamage = "SubclusterBitmap" | "Unaligned" | "ReservedBits" | "OffsetTooLarge"

const UNALLOCATED: L2Entry = Object.freeze({ _tag: "Unallocated" as const })

const COPIED = 0x80000000
const COMPRESSED = 0x40000000
/** Bits 56-61 of the high word. */
const RESERVED_HIGH = 0x3f000000
/** Bits 1-8 of the low word. */
const RESERVED_LOW = 0x1fe
const OFFSET_HIGH = 0x00ffffff

const invalid = (damage: L2EntryDamage, reason: string, hi: number, lo: number): L2Entry => ({
  _tag: "Invalid",
  damage,
  reason,
  raw: (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)
})

/** High 32 bits of the first (or only) 64-bit word of entry `index`. */
export function l2EntryHigh(table: Uint8Array, index: number, geometry: Geometry): number {
  return u32(table, index * geometry.l2EntrySize)
}

/** Low 32 bits of the first (or only) 64-bit word of entry `index`. */
export function l2EntryLow(table: Uint8Array, index: number, geometry: Geometry): number {
  return u32(table, index * geometry.l2EntrySize + 4)
}

/**
 * `readL2Entry` as QEMU's I/O reads an entry: reserved bits (56-61, 1-8)
 * are ignored, not Invalid (qcow2_get_cluster_type masks them; only
 * `qemu-img check` reports them, "found l2 entry with reserved bits set").
 */
export function readL2EntryForIo(table: Uint8Array, index: number, geometry: Geometry, dataFile?: boolean): L2Entry {
  const entry = readL2Entry(table, index, geometry, dataFile)
  if (entry._tag !== "Invalid" || entry.damage !== "ReservedBits") return entry
  const o = index * geometry.l2EntrySize
  const words = table.slice(o, o + geometry.l2EntrySize)
  words[0]! &= ~(RESERVED_HIGH >>> 24)
  words[6]! &= ~(RESERVED_LOW >>> 8)
  words[7]! &= ~(RESERVED_LOW & 0xff)
  return readL2Entry(words, 0, geometry, dataFile)
}

/**
 * Sets the zero flag (bit 0) of standard entry `index` and keeps every
 * other bit, reserved or damaged ones included: QEMU's zero_in_l2_slice
 * without unmapping ORs the flag into the entry as it is.
 */
export function setL2ZeroFlag(table: Uint8Array, index: number, geometry: Geometry): void {
  if (geometry.extendedL2) throw new FormatError("InvalidField", "extended L2 entries have no zero flag", "l2_entry")
  table[index * geometry.l2EntrySize + 7]! |= 1
}

/**
 * Decodes entry `index` (8 bytes each, 16 with extended L2). Never throws for bad content: returns Invalid.
 *
 * `dataFile` says whether the image has an external data file (incompatible bit 2). Host offset 0 is
 * ambiguous: qcow2.txt calls a standard entry with offset 0 and COPIED clear unallocated, and QEMU
 * (qcow2_get_cluster_type) treats offset 0 as a real cluster only with a data file and COPIED set;
 * without a data file an entry that is only COPIED is unallocated (it reads the backing file or zeros,
 * never the image's header cluster). So with `dataFile: false` such an entry decodes as Unallocated
 * (extended L2: Subclusters without a host cluster, or Invalid if it marks subclusters allocated, as
 * QEMU's QCOW2_SUBCLUSTER_INVALID). Omitted, the entry decodes as Normal at host offset 0 and the
 * caller must tell the two apart itself (kept for callers not yet passing the flag).
 */
export function readL2Entry(table: Uint8Array, index: number, geometry: Geometry, dataFile?: boolean): L2Entry {
  const o = index * geometry.l2EntrySize
  const hi = u32(table, o)
  const lo = u32(table, o + 4)
  const extended = geometry.extendedL2
  if ((hi & COMPRESSED) !== 0) {
    const shift = 62 - (geometry.clusterBits - 8)
    const offHi = hi & ((1 << (shift - 32)) - 1)
    if (offHi >= 1 << 24) return invalid("OffsetTooLarge", "compressed cluster offset has bits beyond 55 set", hi, lo)
    if (offHi > MAX_SAFE_HIGH) return invalid("OffsetTooLarge", "compressed cluster offset does not fit in 53 bits", hi, lo)
    return { _tag: "Compressed", ...decodeCompressedDescriptor(hi, lo, geometry.clusterBits) }
  }
  if (hi === 0 && lo === 0 && !extended) return UNALLOCATED
  const offHi = hi & OFFSET_HIGH
  const offLo = (lo & 0xfffffe00) >>> 0
  const hasOffset = offHi !== 0 || offLo !== 0
  // Offset 0 with COPIED is a host cluster only in an external data file (see above).
  const copied = (hi & COPIED) !== 0 && (hasOffset || dataFile !== false)
  let zeroMask = 0
  let allocatedMask = 0
  if (extended) {
    zeroMask = u32(table, o + 8)
    allocatedMask = u32(table, o + 12)
    if ((zeroMask & allocatedMask) !== 0) return invalid("SubclusterBitmap", "subcluster both allocated and zero", hi, lo)
    if (allocatedMask !== 0 && !hasOffset && !copied) {
      return invalid("SubclusterBitmap", "allocated subclusters without a host cluster", hi, lo)
    }
  }
  if ((offLo & (geometry.clusterSize - 1)) !== 0) return invalid("Unaligned", "host offset is not cluster aligned", hi, lo)
  if (offHi > MAX_SAFE_HIGH) return invalid("OffsetTooLarge", "host offset does not fit in 53 bits", hi, lo)
  if ((hi & RESERVED_HIGH) !== 0 || (lo & RESERVED_LOW) !== 0) return invalid("ReservedBits", "reserved bits set", hi, lo)
  const hostOffset = offHi * TWO_32 + offLo
  if (extended) return { _tag: "Subclusters", hostOffset, copied, allocatedMask, zeroMask }
  if ((lo & 1) !== 0) return { _tag: "Zero", hostOffset, copied }
  if (hostOffset === 0 && !copied) return UNALLOCATED
  return { _tag: "Normal", hostOffset, copied }
}

const checkHostOffset = (hostOffset: number, geometry: Geometry): void => {
  if (!Number.isSafeInteger(hostOffset) || hostOffset < 0 || hostOffset % geometry.clusterSize !== 0) {
    throw new FormatError("InvalidField", `host offset ${hostOffset} must be a non-negative cluster-aligned integer`, "l2_entry")
  }
}

/**
 * Encodes an entry. With extended L2, Normal is written as all subclusters
 * allocated, Zero as all subclusters zero, and Unallocated as an all-zero
 * entry; Subclusters is only valid with extended L2 (InvalidField otherwise).
 */
export function writeL2Entry(
  table: Uint8Array,
  index: number,
  entry: Exclude<L2Entry, { _tag: "Invalid" }>,
  geometry: Geometry
): void {
  const o = index * geometry.l2EntrySize
  const extended = geometry.extendedL2
  let hi = 0
  let lo = 0
  let zeroMask = 0
  let allocatedMask = 0
  switch (entry._tag) {
    case "Unallocated":
      break
    case "Compressed": {
      const d = encodeCompressedDescriptor(entry.hostOffset, entry.compressedSize, geometry.clusterBits)
      hi = d.high
      lo = d.low
      break
    }
    case "Normal":
    case "Zero":
    case "Subclusters": {
      checkHostOffset(entry.hostOffset, geometry)
      hi = (Math.floor(entry.hostOffset / TWO_32) | (entry.copied ? COPIED : 0)) >>> 0
      lo = entry.hostOffset >>> 0
      if (entry._tag === "Subclusters") {
        if (!extended) throw new FormatError("InvalidField", "Subclusters entries need extended L2", "l2_entry")
        allocatedMask = entry.allocatedMask >>> 0
        zeroMask = entry.zeroMask >>> 0
        if ((allocatedMask & zeroMask) !== 0) {
          throw new FormatError("InvalidField", "a subcluster cannot be both allocated and zero", "l2_entry")
        }
        if (allocatedMask !== 0 && entry.hostOffset === 0 && !entry.copied) {
          throw new FormatError("InvalidField", "allocated subclusters need a host cluster", "l2_entry")
        }
      } else if (entry._tag === "Zero") {
        if (extended) zeroMask = 0xffffffff
        else lo = (lo | 1) >>> 0
      } else if (extended) {
        allocatedMask = 0xffffffff
      }
      break
    }
  }
  putU32(table, o, hi)
  putU32(table, o + 4, lo)
  if (extended) {
    putU32(table, o + 8, zeroMask)
    putU32(table, o + 12, allocatedMask)
  }
}
