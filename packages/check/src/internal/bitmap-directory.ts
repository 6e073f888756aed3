import {
  BITMAP_ENTRY_FIXED_SIZE,
  BITMAP_MAX_NAME_SIZE,
  BITMAP_TYPE_DIRTY_TRACKING,
  BitmapFlag,
  EntryBits,
  hex64,
  rawOffsetUnaligned,
  readRawWord,
  readU16Lenient,
  readU32Lenient
} from "@qcow2/format"

/** QEMU's limits on bitmap directory entries (block/qcow2-bitmap.c). */
const BME_MAX_TABLE_SIZE = 0x8000000
const BME_MAX_PHYS_SIZE = 0x20000000
const BME_MIN_GRANULARITY_BITS = 9
const BME_MAX_GRANULARITY_BITS = 31
/** QEMU 7.2 treats every flag but in_use and auto as reserved. */
const BME_RESERVED_FLAGS = ~(BitmapFlag.InUse | BitmapFlag.Auto) >>> 0
const ENTRY_FIXED_SIZE = BITMAP_ENTRY_FIXED_SIZE
/** Bitmap table entry bits (qcow2.txt "Bitmap table"): 56-63 reserved (high half), 1-8 reserved and 0 all-ones (low half). */
const BITMAP_ENTRY_RESERVED_HIGH = 0xff000000
const BITMAP_ENTRY_RESERVED_LOW = 0x1fe
const BITMAP_ENTRY_ALL_ONES = 1

/** A persistent bitmap as far as reference counting needs it (qcow2.txt "Bitmap directory"). */
export interface BitmapEntry {
  readonly name: string
  readonly tableOffset: number
  readonly tableOffsetHex: string
  /** Entries in the bitmap table. */
  readonly tableSize: number
  readonly granularityBits: number
  /** The in_use flag: the bitmap's data is not to be trusted (QEMU skips loading it). */
  readonly inUse: boolean
}

const align8 = (n: number): number => Math.ceil(n / 8) * 8

/**
 * Parses and validates the bitmap directory as QEMU's bitmap_list_load and
 * check_dir_entry do. `dir` may be shorter than `size` (the part past the
 * end of the file reads as zero). Returns QEMU's error text when it would
 * refuse the directory.
 */
export function parseBitmapDirectory(
  dir: Uint8Array,
  size: number,
  count: number,
  clusterSize: number,
  virtualSize: number
): { readonly bitmaps: ReadonlyArray<BitmapEntry> } | { readonly error: string } {
  if (size === 0) return { error: "Requested bitmap directory size is zero" }
  const out: Array<BitmapEntry> = []
  const byte = (o: number) => (o < dir.length ? dir[o]! : 0)
  let e = 0
  while (e < size) {
    if (e + ENTRY_FIXED_SIZE > size) return { error: "Broken bitmap directory" }
    if (out.length + 1 > count) return { error: "More bitmaps found than specified in header extension" }
    const { hi: offHi, lo: offLo } = readRawWord(dir, e)
    const tableSize = readU32Lenient(dir, e + 8)
    const flags = readU32Lenient(dir, e + 12)
    const type = byte(e + 16)
    const granularityBits = byte(e + 17)
    const nameSize = readU16Lenient(dir, e + 18)
    const extraSize = readU32Lenient(dir, e + 20)
    const next = e + align8(ENTRY_FIXED_SIZE + nameSize + extraSize)
    if (next > size) return { error: "Broken bitmap directory" }
    if (extraSize !== 0) return { error: "Bitmap extra data is not supported" }
    const nameBytes = new Uint8Array(nameSize)
    for (let i = 0; i < nameSize; i++) nameBytes[i] = byte(e + ENTRY_FIXED_SIZE + i)
    const name = new TextDecoder("utf-8").decode(nameBytes)
    const tableOffset = offHi * 2 ** 32 + offLo
    const physBytes = tableSize * clusterSize
    const bad =
      tableSize === 0 ||
      tableOffset === 0 ||
      offLo % clusterSize !== 0 ||
      tableSize > BME_MAX_TABLE_SIZE ||
      granularityBits > BME_MAX_GRANULARITY_BITS ||
      granularityBits < BME_MIN_GRANULARITY_BITS ||
      (flags & BME_RESERVED_FLAGS) !== 0 ||
      nameSize > BITMAP_MAX_NAME_SIZE ||
      type !== BITMAP_TYPE_DIRTY_TRACKING ||
      physBytes > BME_MAX_PHYS_SIZE ||
      virtualSize > physBytes * 8 * 2 ** granularityBits
    if (bad) return { error: `Bitmap '${name}' doesn't satisfy the constraints` }
    out.push({ name, tableOffset, tableOffsetHex: hex64(offHi, offLo), tableSize, granularityBits, inUse: (flags & BitmapFlag.InUse) !== 0 })
    e = next
  }
  if (out.length !== count) return { error: "Less bitmaps found than specified in header extension" }
  if (e !== size) return { error: "Broken bitmap directory" }
  return { bitmaps: out }
}

/** Whether every bitmap table entry is valid (QEMU's check_table_entry). */
export function bitmapTableValid(table: Uint8Array, entries: number, clusterSize: number): boolean {
  for (let i = 0; i < entries; i++) {
    const { hi, lo } = readRawWord(table, i * 8)
    if ((hi & BITMAP_ENTRY_RESERVED_HIGH) !== 0 || (lo & BITMAP_ENTRY_RESERVED_LOW) !== 0) return false
    const offsetSet = (hi & EntryBits.OffsetHigh) !== 0 || (lo & EntryBits.OffsetLow) !== 0
    if (offsetSet && ((lo & BITMAP_ENTRY_ALL_ONES) !== 0 || rawOffsetUnaligned(lo, clusterSize))) return false
  }
  return true
}

/**
 * Number of bitmap table entries QEMU expects for a bitmap of this
 * granularity over `virtualSize` bytes (load_bitmap_data): the bitmap
 * serialised in 64-bit words, in clusters.
 */
export function expectedBitmapTableSize(virtualSize: number, granularityBits: number, clusterSize: number): number {
  const bits = Math.ceil(virtualSize / 2 ** granularityBits)
  const bytes = Math.ceil(bits / 64) * 8
  return Math.ceil(bytes / clusterSize)
}
