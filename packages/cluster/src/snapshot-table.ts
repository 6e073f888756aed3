import { Effect } from "effect"
import { encodeSnapshotTable, Limits, rawHostOffset, rawL1Entry, snapshotL1Problem, snapshotTableSize } from "@qcow2/format"
import type { OverlapIndex, SnapshotEntry } from "@qcow2/format"
import type { Refcounts } from "@qcow2/alloc"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { ClusterError, strerrorOfFailure } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import type { HeaderState } from "./header.js"
import type { Integrity } from "./integrity.js"
import { passDiscards } from "./free.js"

/**
 * The snapshot table (spec "Snapshots"): the one owner of the list of
 * internal snapshots and of where the table lives. Keeps the "snapshot
 * table" and "inactive L1 table" ranges of the overlap index current.
 *
 * Entries are kept as QEMU keeps them after reading (qcow2_read_snapshots):
 * ID and name are C strings (they end at a NUL byte), an entry whose extra
 * data has no disk size takes the virtual size at open, one without icount
 * takes -1; a rewritten table carries them so.
 */
export class SnapshotTable {
  private list: ReadonlyArray<SnapshotEntry> = []
  private tableOffset = 0
  /** Bytes the table occupies on disk (what freeing it releases). */
  private tableLength = 0

  constructor(
    entries: ReadonlyArray<SnapshotEntry>,
    offset: number,
    virtualSize: number,
    private readonly overlaps: OverlapIndex
  ) {
    this.adopt(entries, offset, virtualSize)
  }

  /** Takes the table as read from disk (at open, and after a repair rewrote it). */
  adopt(entries: ReadonlyArray<SnapshotEntry>, offset: number, virtualSize: number): void {
    this.tableLength = entries.length > 0 ? snapshotTableSize(entries) : 0
    this.tableOffset = entries.length > 0 ? offset : 0
    this.list = entries.map((s) => ({ ...s, id: cString(s.id), name: cString(s.name), diskSize: s.diskSize ?? virtualSize, icount: s.icount ?? -1n }))
    this.index()
  }

  get entries(): ReadonlyArray<SnapshotEntry> {
    return this.list
  }

  /** QEMU's find_snapshot_by_id_and_name: both must match when both are given; -1 when none does. */
  find(id: string | undefined, name: string | undefined): number {
    return this.list.findIndex((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name) && (id !== undefined || name !== undefined))
  }

  /** QEMU's find_snapshot_by_id_or_name: an ID match first, then a name match. */
  findByIdOrName(idOrName: string): number {
    const byId = this.find(idOrName, undefined)
    return byId >= 0 ? byId : this.find(undefined, idOrName)
  }

  /** The ID of a new snapshot: one more than the largest numeric ID (QEMU's find_new_snapshot_id, strtoul of each). */
  nextId(): string {
    let max = 0
    for (const s of this.list) {
      const digits = /^\s*\+?(\d+)/.exec(s.id)
      const id = digits === null ? 0 : Number(digits[1])
      if (id > max) max = id
    }
    return String(max + 1)
  }

  /**
   * Replaces the table with `next` (QEMU's qcow2_write_snapshots): the new
   * table goes into newly allocated clusters and is made durable with its
   * refcounts, then the header is switched to it (rule 4), then the old
   * table is freed, and its clusters discarded in the store (QEMU's
   * QCOW2_DISCARD_SNAPSHOT). A crash in between leaks clusters at worst. A failure
   * to free the old table only leaks it: as QEMU's qcow2_free_clusters,
   * it is reported ("qcow2_free_clusters failed: …") and the rest goes on.
   */
  write(
    next: ReadonlyArray<SnapshotEntry>,
    io: {
      readonly storage: BlockStorageShape
      readonly header: HeaderState
      readonly integrity: Integrity
      readonly refcounts: Refcounts
      readonly flush: () => Effect.Effect<void, EngineFailure>
      readonly report: (line: string) => void
    }
  ): Effect.Effect<void, EngineFailure> {
    const self = this
    return Effect.gen(function* () {
      if (next.length > Limits.maxSnapshots) return yield* tooLarge(`more than ${Limits.maxSnapshots} snapshots`)
      const length = snapshotTableSize(next)
      if (length > Limits.maxSnapshotTableBytes) return yield* tooLarge(`the snapshot table would exceed ${Limits.maxSnapshotTableBytes} bytes`)
      let offset = 0
      if (length > 0) {
        const cs = io.refcounts.clusterSize
        const clusters = Math.ceil(length / cs)
        offset = yield* io.refcounts.allocate(clusters)
        yield* io.flush()
        yield* io.integrity.guardWrite(offset, length)
        const bytes = new Uint8Array(clusters * cs)
        bytes.set(encodeSnapshotTable(next))
        yield* io.storage.write(offset, bytes.subarray(0, length))
        yield* io.flush()
      }
      const old = { offset: self.tableOffset, length: self.tableLength }
      yield* io.header.update({ nbSnapshots: next.length, snapshotsOffset: offset })
      self.list = next
      self.tableOffset = offset
      self.tableLength = length
      self.index()
      yield* self.indexInactiveL2(io.storage)
      if (old.length === 0) return
      const freed = yield* Effect.result(io.refcounts.free(old.offset, old.length, true))
      if (freed._tag === "Failure") {
        io.refcounts.takeDiscards()
        io.report(`qcow2_free_clusters failed: ${strerrorOfFailure(freed.failure)}`)
      } else {
        yield* passDiscards(io)
      }
    })
  }

  /**
   * With overlap-check.inactive-l2: reads the snapshots' L1 tables, once
   * after they changed, and indexes the L2 tables they point to (QEMU reads
   * them at every check; here the index is kept until the table changes).
   * Tables that fail validation are left to `inactiveL2Refusal`.
   */
  indexInactiveL2(storage: BlockStorageShape): Effect.Effect<void, StorageError> {
    if (this.overlaps.inactiveL2Ready) return Effect.void
    const overlaps = this.overlaps
    const list = this.list
    return Effect.gen(function* () {
      const offsets: number[] = []
      for (const s of list) {
        if (s.l1Size === 0 || snapshotL1Problem(s.l1TableOffset, s.l1Size, overlaps.clusterBytes) !== undefined) continue
        const table = new Uint8Array(s.l1Size * 8)
        yield* storage.read(s.l1TableOffset, table)
        for (let i = 0; i < s.l1Size; i++) {
          const entry = rawL1Entry(table, i)
          // L1E_OFFSET_MASK (past 2^53 no write reaches it, and the index skips it).
          const offset = rawHostOffset(entry.hi, entry.lo)
          if (offset !== 0) offsets.push(offset)
        }
      }
      overlaps.setInactiveL2Tables(offsets)
    })
  }

  private index(): void {
    this.overlaps.setRanges("snapshot table", this.tableLength > 0 ? [{ offset: this.tableOffset, length: this.tableLength }] : [])
    this.overlaps.setInactiveL1Tables(this.list.map((s) => ({ offset: s.l1TableOffset, entries: s.l1Size })))
  }
}

/** A string as C reads it: up to its first NUL. */
const cString = (text: string): string => {
  const nul = text.indexOf("\0")
  return nul < 0 ? text : text.slice(0, nul)
}

const tooLarge = (message: string) => new ClusterError({ reason: "InvalidArgument", message, errno: "EFBIG" })
