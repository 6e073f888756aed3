import { Limits } from "./constants.js"
import { FormatError } from "./errors.js"
import { MAX_SAFE_HIGH, TWO_32, checkU32, fromUtf8, need, putU16, putU32, putU64, u16, u32, u64, utf8 } from "./bytes.js"

/** One bitmap directory entry (qcow2.txt "Bitmap directory"). */
export interface BitmapDirectoryEntry {
  /** Offset of the bitmap table (cluster aligned). */
  readonly tableOffset: number
  /** Entries in the bitmap table. */
  readonly tableSize: number
  /** Bit 0 in_use, 1 auto, 2 extra_data_compatible. */
  readonly flags: number
  /** 1 = dirty tracking bitmap. */
  readonly type: number
  readonly granularityBits: number
  readonly name: string
  readonly extraData: Uint8Array
}

/** Bitmap directory entry flag bits. */
export const BitmapFlag = { InUse: 1, Auto: 2, ExtraDataCompatible: 4 } as const

/** Bitmap type 1: dirty tracking. */
export const BITMAP_TYPE_DIRTY_TRACKING = 1

/** QEMU's limit on bitmap name length. */
export const BITMAP_MAX_NAME_SIZE = 1023

/** Fixed part of a bitmap directory entry. */
export const BITMAP_ENTRY_FIXED_SIZE = 24

const roundUp8 = (n: number): number => Math.ceil(n / 8) * 8

/**
 * Decodes `count` entries from the start of `bytes`, checking every length
 * against bytes.length (Truncated) and count against QEMU's 65535 bitmaps.
 * Field values (flags, type, name size) are returned as stored for the
 * caller to judge.
 */
export function decodeBitmapDirectory(bytes: Uint8Array, count: number): BitmapDirectoryEntry[] {
  if (!Number.isInteger(count) || count < 0 || count > Limits.maxBitmaps) {
    throw new FormatError("InvalidField", `bitmap count must be 0..${Limits.maxBitmaps}, got ${count}`, "nb_bitmaps")
  }
  const out: BitmapDirectoryEntry[] = []
  let off = 0
  for (let i = 0; i < count; i++) {
    need(bytes, off, BITMAP_ENTRY_FIXED_SIZE, "bitmap_directory_entry")
    const nameSize = u16(bytes, off + 18)
    const extraSize = u32(bytes, off + 20)
    const extraOff = off + BITMAP_ENTRY_FIXED_SIZE
    need(bytes, extraOff, extraSize, "bitmap_extra_data")
    const nameOff = extraOff + extraSize
    need(bytes, nameOff, nameSize, "bitmap_name")
    out.push({
      tableOffset: u64(bytes, off, "bitmap_table_offset"),
      tableSize: u32(bytes, off + 8),
      flags: u32(bytes, off + 12),
      type: bytes[off + 16]!,
      granularityBits: bytes[off + 17]!,
      name: fromUtf8(bytes.subarray(nameOff, nameOff + nameSize)),
      extraData: bytes.slice(extraOff, nameOff)
    })
    off = roundUp8(nameOff + nameSize)
  }
  return out
}

/** Size in bytes of the encoded directory (the bitmaps extension's directory_size). */
export function bitmapDirectorySize(entries: ReadonlyArray<BitmapDirectoryEntry>): number {
  let size = 0
  for (const e of entries) size += roundUp8(BITMAP_ENTRY_FIXED_SIZE + e.extraData.length + utf8(e.name).length)
  return size
}

/** Encodes entries back to back, each padded with zeros to 8 bytes. Names must be 1..1023 bytes. */
export function encodeBitmapDirectory(entries: ReadonlyArray<BitmapDirectoryEntry>): Uint8Array {
  if (entries.length > Limits.maxBitmaps) {
    throw new FormatError("InvalidField", `more than ${Limits.maxBitmaps} bitmaps`, "nb_bitmaps")
  }
  const out = new Uint8Array(bitmapDirectorySize(entries))
  let off = 0
  for (const e of entries) {
    const name = utf8(e.name)
    if (name.length < 1 || name.length > BITMAP_MAX_NAME_SIZE) {
      throw new FormatError("InvalidField", `bitmap name must be 1..${BITMAP_MAX_NAME_SIZE} bytes, got ${name.length}`, "bitmap_name")
    }
    checkU32(e.tableSize, "bitmap_table_size")
    checkU32(e.flags, "bitmap_flags")
    checkU32(e.extraData.length, "bitmap_extra_data_size")
    if (!Number.isInteger(e.type) || e.type < 0 || e.type > 255) {
      throw new FormatError("InvalidField", `bitmap type must fit one byte, got ${e.type}`, "bitmap_type")
    }
    if (!Number.isInteger(e.granularityBits) || e.granularityBits < 0 || e.granularityBits > 63) {
      throw new FormatError("InvalidField", `granularity_bits must be 0..63, got ${e.granularityBits}`, "bitmap_granularity_bits")
    }
    putU64(out, off, e.tableOffset, "bitmap_table_offset")
    putU32(out, off + 8, e.tableSize)
    putU32(out, off + 12, e.flags)
    out[off + 16] = e.type
    out[off + 17] = e.granularityBits
    putU16(out, off + 18, name.length)
    putU32(out, off + 20, e.extraData.length)
    out.set(e.extraData, off + BITMAP_ENTRY_FIXED_SIZE)
    out.set(name, off + BITMAP_ENTRY_FIXED_SIZE + e.extraData.length)
    off += roundUp8(BITMAP_ENTRY_FIXED_SIZE + e.extraData.length + name.length)
  }
  return out
}

/**
 * Bitmap table entry (qcow2.txt "Bitmap table"): bits 9-55 data cluster
 * offset; when the offset is 0, bit 0 says the cluster reads as all ones (1)
 * or all zeros (0). `reservedBitsSet`: bits 1-8 or 56-63 set, or bit 0 set
 * together with an offset.
 */
export interface BitmapTableEntry {
  readonly offset: number
  readonly allOnes: boolean
  readonly reservedBitsSet: boolean
}

/** Reads bitmap table entry `index`; OffsetTooLarge if the offset is >= 2^53. */
export function readBitmapTableEntry(table: Uint8Array, index: number): BitmapTableEntry {
  const o = index * 8
  const hi = u32(table, o)
  const lo = u32(table, o + 4)
  const offHi = hi & 0x00ffffff
  if (offHi > MAX_SAFE_HIGH) {
    throw new FormatError("OffsetTooLarge", `bitmap table entry ${index} points past 2^53`, "bitmap_table_entry", o)
  }
  const offset = offHi * TWO_32 + ((lo & 0xfffffe00) >>> 0)
  const bit0 = (lo & 1) !== 0
  return {
    offset,
    allOnes: offset === 0 && bit0,
    reservedBitsSet: (hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 || (offset !== 0 && bit0)
  }
}

/** Writes a bitmap table entry: a data cluster offset, or offset 0 with the all-ones flag. */
export function writeBitmapTableEntry(table: Uint8Array, index: number, offset: number, allOnes: boolean): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 512 !== 0) {
    throw new FormatError("InvalidField", `bitmap data offset ${offset} must be a non-negative multiple of 512`, "bitmap_table_entry")
  }
  if (offset !== 0 && allOnes) {
    throw new FormatError("InvalidField", "the all-ones flag is only valid without a data cluster", "bitmap_table_entry")
  }
  const o = index * 8
  putU32(table, o, Math.floor(offset / TWO_32))
  putU32(table, o + 4, ((offset >>> 0) | (allOnes ? 1 : 0)) >>> 0)
}

/** QEMU's limits on one bitmap (block/qcow2-bitmap.c BME_MAX_TABLE_SIZE, BME_MAX_PHYS_SIZE) and the directory. */
export const BitmapLimits = {
  minGranularityBits: 9,
  maxGranularityBits: 31,
  maxTableEntries: 0x8000000,
  maxDataBytes: 0x20000000,
  maxDirectoryBytes: 64 * 1024 * 1024
} as const

/**
 * Bytes of a bitmap's serialised data (qcow2.txt "Bitmap data"): one bit
 * per `2^granularityBits` guest bytes, bit i in byte i/8 at bit i%8, padded
 * to whole 64-bit words as QEMU writes them.
 */
export function bitmapDataBytes(virtualSize: number, granularityBits: number): number {
  const bits = Math.ceil(virtualSize / 2 ** granularityBits)
  return Math.ceil(bits / 64) * 8
}

/** Entries of the bitmap table of such a bitmap: one per cluster of serialised data. */
export function bitmapTableEntries(virtualSize: number, granularityBits: number, clusterSize: number): number {
  return Math.ceil(bitmapDataBytes(virtualSize, granularityBits) / clusterSize)
}

/** Bytes one directory entry takes for a bitmap of this name (no extra data), padded to 8. */
export function bitmapDirectoryEntrySize(name: string): number {
  return roundUp8(BITMAP_ENTRY_FIXED_SIZE + utf8(name).length)
}

/** A persistent bitmap as `measure` counts it. */
export interface MeasuredBitmap {
  readonly name: string
  readonly granularity: number
  /** Bytes the bitmap covers (the virtual size of its image). */
  readonly size: number
}

/**
 * Bytes that copying these bitmaps into a new image of `clusterSize`
 * needs, every bitmap assumed fully dirty: data clusters, bitmap tables and
 * the directory, each rounded up to clusters (QEMU's
 * qcow2_get_persistent_dirty_bitmap_size, "bitmaps size" of qemu-img measure).
 * Unlike the table written for an image, QEMU counts bytes here, not 64-bit words.
 */
export function persistentBitmapsSize(bitmaps: ReadonlyArray<MeasuredBitmap>, clusterSize: number): number {
  let total = 0
  let directory = 0
  for (const b of bitmaps) {
    const dataBytes = Math.ceil(Math.ceil(b.size / b.granularity) / 8)
    const clusters = Math.ceil(dataBytes / clusterSize)
    total += clusters * clusterSize
    total += Math.ceil((clusters * 8) / clusterSize) * clusterSize
    directory += bitmapDirectoryEntrySize(b.name)
  }
  return total + Math.ceil(directory / clusterSize) * clusterSize
}

/**
 * Granularity of a bitmap added without one (QEMU's
 * bdrv_get_default_bitmap_granularity): the cluster size, kept within 4 KiB..64 KiB.
 */
export function defaultBitmapGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize))
}
