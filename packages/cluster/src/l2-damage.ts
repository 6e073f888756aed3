import { hexAlt } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"

/** An L2 entry the codec does not call Invalid. */
type ValidL2Entry = Exclude<L2Entry, { _tag: "Invalid" }>

/** An L2 entry the codec calls Invalid. */
export type InvalidL2Entry = Extract<L2Entry, { _tag: "Invalid" }>

/** Where a damaged L2 entry sits: its table's host offset and its index in the table. */
export interface L2Slot {
  readonly l2Offset: number
  readonly index: number
}

const OFFSET_MASK = 0x00fffffffffffe00n
const COPIED = 1n << 63n
const ZERO_FLAG = 1n
const COMPRESSED = 1n << 62n

/**
 * An unaligned entry this image does not own (COPIED clear): QEMU's write
 * path gives a cluster such an entry maps a new host cluster like any other
 * it does not own (handle_alloc), and only a copy-on-write read of it, or a
 * free of its offset, meets the damage.
 */
export const isUnownedUnaligned = (entry: L2Entry): entry is InvalidL2Entry =>
  entry._tag === "Invalid" && entry.damage === "Unaligned" && (entry.raw & COPIED) === 0n

/**
 * A zero flag QEMU's qcow2_get_cluster_type sees in a damaged standard
 * entry (not compressed): on a version 2 image the "Zero cluster entry
 * found in pre-v3 image" refusal comes before any check of the offset.
 */
export const hasZeroFlag = (entry: InvalidL2Entry): boolean => (entry.raw & ZERO_FLAG) !== 0n && (entry.raw & COMPRESSED) === 0n

/** "(L2 offset: …, L2 index: …)", as QEMU places a damaged entry. */
export const slotText = (slot: L2Slot): string => `(L2 offset: ${hexAlt(slot.l2Offset)}, L2 index: ${hexAlt(slot.index)})`

/** Damage QEMU's I/O does not know (it ignores reserved bits; offsets past 2^53 are a limit here), worded the same way. */
const ownWording = (entry: InvalidL2Entry, slot: L2Slot): string => `L2 entry ${hexAlt(entry.raw)} invalid: ${entry.reason} ${slotText(slot)}`

/** A zero flag in a version 2 image, which has none: QEMU 7.2's qcow2_get_host_offset refuses to map through it. */
export const preV3ZeroMessage = (slot: L2Slot): string => `Zero cluster entry found in pre-v3 image ${slotText(slot)}`

/**
 * The corruption message for a damaged entry met while mapping guest bytes
 * (reads, and copy-on-write reads), as QEMU 7.2's qcow2_get_host_offset
 * words it: "Invalid cluster entry found  (L2 offset: …, L2 index: …)"
 * (two spaces, as QEMU prints them) for subcluster bits no image may hold,
 * "Cluster allocation offset … unaligned (L2 offset: …, L2 index: …)" for
 * an unaligned host offset.
 */
export function readDamageMessage(entry: InvalidL2Entry, slot: L2Slot): string {
  switch (entry.damage) {
    case "SubclusterBitmap":
      return `Invalid cluster entry found  ${slotText(slot)}`
    case "Unaligned":
      return `Cluster allocation offset ${hexAlt(entry.raw & OFFSET_MASK)} unaligned ${slotText(slot)}`
    case "ReservedBits":
    case "OffsetTooLarge":
      return ownWording(entry, slot)
  }
}

/**
 * The corruption message for a damaged entry met by a write at guest
 * `guestOffset`, as QEMU 7.2's write path words it: calculate_l2_meta's
 * "Invalid cluster entry found (L2 offset: …, L2 index: …)" (one space),
 * handle_copied's "Data cluster offset … unaligned (guest offset: …)"
 * ("Preallocated zero cluster …" when bit 0 is set) for an unaligned entry
 * the image owns (COPIED); an unaligned entry it does not own fails in the
 * copy-on-write read, with the read path's message (written whole, it is
 * replaced instead: see `isUnownedUnaligned`).
 */
export function writeDamageMessage(entry: InvalidL2Entry, slot: L2Slot, guestOffset: number): string {
  switch (entry.damage) {
    case "SubclusterBitmap":
      return `Invalid cluster entry found ${slotText(slot)}`
    case "Unaligned":
      if ((entry.raw & COPIED) === 0n) return readDamageMessage(entry, slot)
      return `${(entry.raw & ZERO_FLAG) !== 0n ? "Preallocated zero" : "Data"} cluster offset ${hexAlt(entry.raw & OFFSET_MASK)} unaligned (guest offset: ${hexAlt(guestOffset)})`
    case "ReservedBits":
    case "OffsetTooLarge":
      return ownWording(entry, slot)
  }
}

/**
 * What an entry with an unaligned host offset is to a change that drops
 * it (discard, an unmapping zero write): a cluster with host data, of the
 * entry's flags. Its offset is never freed (see `freeDamageMessage`).
 */
export const unalignedStandIn = (entry: InvalidL2Entry, extendedL2: boolean): ValidL2Entry => {
  const hostOffset = Number(entry.raw & OFFSET_MASK)
  const copied = (entry.raw & COPIED) !== 0n
  return extendedL2 ? { _tag: "Subclusters", hostOffset, copied, allocatedMask: 0xffffffff, zeroMask: 0 } : { _tag: "Normal", hostOffset, copied }
}

/** QEMU's qcow2_free_any_cluster, which does not free an unaligned cluster and reports it as non-fatal corruption. */
export const freeDamageMessage = (entry: InvalidL2Entry): string => `Cannot free unaligned cluster ${hexAlt(entry.raw & OFFSET_MASK)}`
