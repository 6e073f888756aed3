import {
  EntryBits,
  FormatError,
  type L2Entry,
  hex64,
  rawHostOffset,
  rawL1Entry,
  rawL2Entry,
  rawRefblockOffset,
  rawRefcountTableEntry,
  readL1Entry,
  readL2Entry,
  readRefcountTableEntry,
  readU32Lenient
} from "@qcow2/format"
import type { RawL2Entry } from "@qcow2/format"
import type { ImageInfo } from "./state.js"

/**
 * Table entries as QEMU's check sees them. Valid entries are decoded by the
 * strict codecs of @qcow2/format; entries those refuse (offsets at or above
 * 2^53, reserved bits, unaligned offsets: an `Invalid` L2 entry) are
 * classified from their raw words, as QEMU classifies every entry, so that
 * they are still counted and reported.
 */

/** L2 entry types as QEMU's qcow2_get_cluster_type classifies them. */
export const ClusterType = {
  Unallocated: 0,
  ZeroPlain: 1,
  ZeroAlloc: 2,
  Normal: 3,
  Compressed: 4
} as const
export type ClusterType = (typeof ClusterType)[keyof typeof ClusterType]

/** Classifies a raw L2 entry (QEMU's qcow2_get_cluster_type; the zero bit is unused with extended L2). */
export function rawClusterType(raw: RawL2Entry, extendedL2: boolean, hasDataFile: boolean): ClusterType {
  const { hi, lo } = raw
  if ((hi & EntryBits.Compressed) !== 0) return ClusterType.Compressed
  const hasOffset = (hi & EntryBits.OffsetHigh) !== 0 || (lo & EntryBits.OffsetLow) !== 0
  if ((lo & EntryBits.Zero) !== 0 && !extendedL2) return hasOffset ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain
  if (!hasOffset) return hasDataFile && (hi & EntryBits.Copied) !== 0 ? ClusterType.Normal : ClusterType.Unallocated
  return ClusterType.Normal
}

/** The exact hex text of hi:lo when `value` (its double) is not exact, else undefined. */
export const exactHex = (value: number, hi: number, lo: number): string | undefined =>
  value > Number.MAX_SAFE_INTEGER ? hex64(hi, lo >>> 0) : undefined

/** Exact hex of the offset bits 9-55 of an entry, when the double is not exact. */
export const offsetHex = (hi: number, lo: number): string | undefined =>
  exactHex(rawHostOffset(hi, lo), hi & EntryBits.OffsetHigh, lo & EntryBits.OffsetLow)

/**
 * Whether the 64-bit word at `byteOffset` is zero (past the end of `table`
 * too): an empty entry, which the scans skip before decoding anything
 * (most of a sparse image's entries).
 */
export const zeroWord = (table: Uint8Array, byteOffset: number): boolean =>
  readU32Lenient(table, byteOffset) === 0 && readU32Lenient(table, byteOffset + 4) === 0

/** A decoded L2 entry (of the image's geometry), `Invalid` included. */
export const l2Entry = (img: ImageInfo, table: Uint8Array, index: number): L2Entry => readL2Entry(table, index, img.geometry)

/** The raw words of L2 entry `index`. */
export const l2Raw = (img: ImageInfo, table: Uint8Array, index: number): RawL2Entry => rawL2Entry(table, index, img.geometry)

/**
 * The host cluster a valid L2 entry allocates, as QEMU's types NORMAL and
 * ZERO_ALLOC have one (offset 0 only with an external data file), or -1.
 * Not for `Invalid` entries.
 */
export function allocatedOffset(e: L2Entry, hasDataFile: boolean): number {
  switch (e._tag) {
    case "Zero":
      return e.hostOffset !== 0 ? e.hostOffset : -1
    case "Normal":
      return e.hostOffset !== 0 || hasDataFile ? e.hostOffset : -1
    case "Subclusters":
      return e.hostOffset !== 0 || (hasDataFile && e.copied) ? e.hostOffset : -1
    default:
      return -1
  }
}

/** An L1 entry: the decoded fields, and the raw words for messages. */
export interface L1View {
  readonly l2Offset: number
  readonly copied: boolean
  readonly reservedBitsSet: boolean
  readonly hi: number
  readonly lo: number
}

const EMPTY_L1_ENTRY: L1View = { l2Offset: 0, copied: false, reservedBitsSet: false, hi: 0, lo: 0 }

/** L1 entry `index` (past the end of `table`: zero), decoded by readL1Entry, or leniently when its offset is at or above 2^53. */
export function l1Entry(table: Uint8Array, index: number): L1View {
  if (zeroWord(table, index * 8)) return EMPTY_L1_ENTRY
  const { hi, lo } = rawL1Entry(table, index)
  try {
    const e = readL1Entry(table, index)
    return { l2Offset: e.l2Offset, copied: e.copied, reservedBitsSet: e.reservedBitsSet, hi, lo }
  } catch (err) {
    if (!(err instanceof FormatError)) throw err
    return {
      l2Offset: rawHostOffset(hi, lo),
      copied: (hi & EntryBits.Copied) !== 0,
      reservedBitsSet: (hi & EntryBits.L1ReservedHigh) !== 0 || (lo & EntryBits.ReservedLow9) !== 0,
      hi,
      lo
    }
  }
}

/** A refcount table entry: block offset (bits 9-63, inexact at or above 2^53) and the raw low word. */
export interface ReftableView {
  readonly offset: number
  readonly reservedBitsSet: boolean
  readonly lo: number
}

const EMPTY_REFTABLE_ENTRY: ReftableView = { offset: 0, reservedBitsSet: false, lo: 0 }

/** Refcount table entry `index`: block offset (bits 9-63, inexact at or above 2^53) and the raw low word. */
export function reftableEntry(table: Uint8Array, index: number): ReftableView {
  if (zeroWord(table, index * 8)) return EMPTY_REFTABLE_ENTRY
  const { hi, lo } = rawRefcountTableEntry(table, index)
  try {
    const e = readRefcountTableEntry(table, index)
    return { offset: e.offset, reservedBitsSet: e.reservedBitsSet, lo }
  } catch (err) {
    if (!(err instanceof FormatError)) throw err
    return { offset: rawRefblockOffset(hi, lo), reservedBitsSet: (lo & EntryBits.ReservedLow9) !== 0, lo }
  }
}
