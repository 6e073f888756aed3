import { Limits } from "./constants.js"
import { FormatError } from "./errors.js"
import { checkU16, checkU32, fromUtf8, need, putU16, putU32, putU64, putU64big, u16, u32, u64, u64big, utf8 } from "./bytes.js"

/**
 * One snapshot table entry (qcow2.txt "Snapshots", snapshot table entry).
 * `extraData` holds the full raw extra data; vmStateSize, diskSize and icount
 * are decoded from it when long enough (bytes 40-47, 48-55, 56-63 of the entry).
 */
export interface SnapshotEntry {
  readonly l1TableOffset: number
  readonly l1Size: number
  readonly id: string
  readonly name: string
  readonly dateSeconds: number
  readonly dateNanoseconds: number
  readonly vmClockNanoseconds: bigint
  /** From extra data bytes 0-7 when present, else the 32-bit field at byte 32. */
  readonly vmStateSize: number
  /** Extra data bytes 8-15 (virtual disk size when the snapshot was taken). */
  readonly diskSize?: number
  /** Extra data bytes 16-23, signed (-1 = icount disabled). */
  readonly icount?: bigint
  readonly extraData: Uint8Array
}

/** Fixed part of a snapshot table entry. */
export const SNAPSHOT_ENTRY_FIXED_SIZE = 40

/** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA: more extra data in one entry refuses the open. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024

/** Largest single entry: fixed part, the most extra data QEMU accepts, ID and name of 65535 bytes each. */
export const MAX_SNAPSHOT_ENTRY_SIZE = SNAPSHOT_ENTRY_FIXED_SIZE + MAX_SNAPSHOT_EXTRA_DATA + 2 * 0xffff

/**
 * Why QEMU refuses to open an image with this snapshot table
 * (qcow2_read_snapshots, not in repair mode), as it words it (message,
 * then the hint line), or undefined. `bytes` holds the table from its
 * start, zeros past the end of the file (as QEMU reads them); entries are
 * walked until one breaks a limit or `count` are seen: extra data over
 * 1024 bytes, or a table over 64 MiB.
 */
export function snapshotTableRefusal(bytes: Uint8Array, count: number): string | undefined {
  let off = 0
  let length = 0
  for (let i = 0; i < count; i++) {
    off = roundUp8(off)
    length = roundUp8(length)
    if (off + SNAPSHOT_ENTRY_FIXED_SIZE > bytes.length) return undefined
    const extraLen = u32(bytes, off + 36)
    if (extraLen > MAX_SNAPSHOT_EXTRA_DATA) {
      return `Too much extra metadata in snapshot table entry ${i}\nYou can force-remove this extra metadata with qemu-img check -r all`
    }
    const entry = SNAPSHOT_ENTRY_FIXED_SIZE + extraLen + u16(bytes, off + 12) + u16(bytes, off + 14)
    off += entry
    length += entry
    if (length > Limits.maxSnapshotTableBytes) {
      return `Snapshot table is too big\nYou can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`
    }
  }
  return undefined
}

const roundUp8 = (n: number): number => Math.ceil(n / 8) * 8

/**
 * Decodes `count` entries from the start of `bytes`. Every length is checked
 * against bytes.length before use (Truncated); count is bounded by QEMU's
 * limit (InvalidField). byteLength includes the padding of the last entry.
 */
export function decodeSnapshotTable(
  bytes: Uint8Array,
  count: number
): { readonly snapshots: SnapshotEntry[]; readonly byteLength: number } {
  if (!Number.isInteger(count) || count < 0 || count > Limits.maxSnapshots) {
    throw new FormatError("InvalidField", `snapshot count must be 0..${Limits.maxSnapshots}, got ${count}`, "nb_snapshots")
  }
  const snapshots: SnapshotEntry[] = []
  let off = 0
  for (let i = 0; i < count; i++) {
    need(bytes, off, SNAPSHOT_ENTRY_FIXED_SIZE, "snapshot_entry")
    const idLen = u16(bytes, off + 12)
    const nameLen = u16(bytes, off + 14)
    const extraLen = u32(bytes, off + 36)
    const extraOff = off + SNAPSHOT_ENTRY_FIXED_SIZE
    need(bytes, extraOff, extraLen, "snapshot_extra_data")
    const idOff = extraOff + extraLen
    need(bytes, idOff, idLen + nameLen, "snapshot_id_name")
    const extraData = bytes.slice(extraOff, idOff)
    const vmStateSize = extraLen >= 8 ? u64(extraData, 0, "snapshot_vm_state_size") : u32(bytes, off + 32)
    const entry: SnapshotEntry = {
      l1TableOffset: u64(bytes, off, "snapshot_l1_table_offset"),
      l1Size: u32(bytes, off + 8),
      id: fromUtf8(bytes.subarray(idOff, idOff + idLen)),
      name: fromUtf8(bytes.subarray(idOff + idLen, idOff + idLen + nameLen)),
      dateSeconds: u32(bytes, off + 16),
      dateNanoseconds: u32(bytes, off + 20),
      vmClockNanoseconds: u64big(bytes, off + 24),
      vmStateSize,
      ...(extraLen >= 16 ? { diskSize: u64(extraData, 8, "snapshot_disk_size") } : {}),
      ...(extraLen >= 24 ? { icount: BigInt.asIntN(64, u64big(extraData, 16)) } : {}),
      extraData
    }
    snapshots.push(entry)
    off = roundUp8(idOff + idLen + nameLen)
  }
  return { snapshots, byteLength: off }
}

/** The extra data written for an entry: the raw extra data, grown as needed, with the decoded fields laid over it. */
function entryExtraData(s: SnapshotEntry): Uint8Array {
  let len = s.extraData.length
  if (s.vmStateSize > 0xffffffff) len = Math.max(len, 8)
  if (s.diskSize !== undefined) len = Math.max(len, 16)
  if (s.icount !== undefined) len = Math.max(len, 24)
  const extra = new Uint8Array(len)
  extra.set(s.extraData)
  if (len >= 8) putU64(extra, 0, s.vmStateSize, "snapshot_vm_state_size")
  if (s.diskSize !== undefined) putU64(extra, 8, s.diskSize, "snapshot_disk_size")
  else if (len >= 16 && s.extraData.length < 16) putU64(extra, 8, 0, "snapshot_disk_size")
  if (s.icount !== undefined) putU64big(extra, 16, s.icount)
  return extra
}

const entrySize = (extraLen: number, idLen: number, nameLen: number): number =>
  roundUp8(SNAPSHOT_ENTRY_FIXED_SIZE + extraLen + idLen + nameLen)

/**
 * The table's length as QEMU counts it (snapshots_size): entries padded to
 * 8 bytes except the last, which ends at its name. encodeSnapshotTable
 * pads the last one too; QEMU writes (and frees) only this many bytes.
 */
export function snapshotTableSize(snapshots: ReadonlyArray<SnapshotEntry>): number {
  let size = 0
  for (const s of snapshots) size = roundUp8(size) + SNAPSHOT_ENTRY_FIXED_SIZE + entryExtraData(s).length + utf8(s.id).length + utf8(s.name).length
  return size
}

/**
 * Encodes entries back to back, each padded to 8 bytes. Extra data is
 * written as given, extended so that diskSize/icount (and a vmStateSize
 * above 32 bits) fit, with those fields written at their positions (a disk
 * size slot that only the extension covers is written as 0).
 */
export function encodeSnapshotTable(snapshots: ReadonlyArray<SnapshotEntry>): Uint8Array {
  if (snapshots.length > Limits.maxSnapshots) {
    throw new FormatError("InvalidField", `more than ${Limits.maxSnapshots} snapshots`, "nb_snapshots")
  }
  const parts = snapshots.map((s) => ({ s, extra: entryExtraData(s), id: utf8(s.id), name: utf8(s.name) }))
  let total = 0
  for (const p of parts) total += entrySize(p.extra.length, p.id.length, p.name.length)
  const out = new Uint8Array(total)
  let off = 0
  for (const { s, extra, id, name } of parts) {
    checkU32(s.l1Size, "snapshot_l1_size")
    checkU16(id.length, "snapshot_id_size")
    checkU16(name.length, "snapshot_name_size")
    checkU32(s.dateSeconds, "snapshot_date_sec")
    checkU32(s.dateNanoseconds, "snapshot_date_nsec")
    checkU32(extra.length, "snapshot_extra_data_size")
    if (!Number.isSafeInteger(s.vmStateSize) || s.vmStateSize < 0) {
      throw new FormatError("InvalidField", `vmStateSize ${s.vmStateSize} is not a non-negative integer`, "snapshot_vm_state_size")
    }
    putU64(out, off, s.l1TableOffset, "snapshot_l1_table_offset")
    putU32(out, off + 8, s.l1Size)
    putU16(out, off + 12, id.length)
    putU16(out, off + 14, name.length)
    putU32(out, off + 16, s.dateSeconds)
    putU32(out, off + 20, s.dateNanoseconds)
    putU64big(out, off + 24, s.vmClockNanoseconds)
    putU32(out, off + 32, s.vmStateSize >>> 0)
    putU32(out, off + 36, extra.length)
    const extraOff = off + SNAPSHOT_ENTRY_FIXED_SIZE
    out.set(extra, extraOff)
    out.set(id, extraOff + extra.length)
    out.set(name, extraOff + extra.length + id.length)
    off += entrySize(extra.length, id.length, name.length)
  }
  return out
}
