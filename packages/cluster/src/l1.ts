import { Effect } from "effect"
import { Limits, hexAlt, readL1Entry, writeL1Entry } from "@qcow2/format"
import type { Refcounts } from "@qcow2/alloc"
import { debugPoint, type BlockStorageShape } from "@qcow2/storage"
import { ClusterError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import type { HeaderState } from "./header.js"
import type { Integrity } from "./integrity.js"

/**
 * The active L1 table (spec "Cluster mapping"): kept whole in memory, every
 * change written through (consistency rule 4 for L1 entries and for the
 * header fields that locate the table). Keeps the active L1 and L2 ranges
 * of the overlap index current.
 */
export class ActiveL1 {
  private bytes: Uint8Array
  private tableOffset: number
  private entries: number

  constructor(
    private readonly storage: BlockStorageShape,
    private readonly header: HeaderState,
    private readonly integrity: Integrity,
    private readonly clusterSize: number,
    table: Uint8Array
  ) {
    this.bytes = table
    this.tableOffset = header.header.l1TableOffset
    this.entries = header.header.l1Size
    this.index()
  }

  get offset(): number {
    return this.tableOffset
  }

  /** Number of entries. */
  get size(): number {
    return this.entries
  }

  /** The raw table (l1_size entries); read only. */
  get table(): Uint8Array {
    return this.bytes.subarray(0, this.entries * 8)
  }

  /**
   * The L2 table offset of entry `index` (0 when empty or past the end),
   * checked the way QEMU checks it before use: an offset past 2^53 or an
   * unaligned one is corruption. A table that overlaps other metadata is
   * used as it is, as QEMU does: overlaps are checked before writes only
   * (a data write there, or the table's own write-back, is refused and
   * marks the image corrupt; iotest 060 reads through such a table).
   */
  l2Offset(index: number): Effect.Effect<number, ClusterError> {
    if (index >= this.entries) return Effect.succeed(0)
    let offset: number
    try {
      offset = readL1Entry(this.bytes, index).l2Offset
    } catch {
      return this.integrity.markCorrupt(`L1 entry ${index} points past 2^53`, this.tableOffset + index * 8)
    }
    if (offset === 0) return Effect.succeed(0)
    if (offset % this.clusterSize !== 0) {
      return this.integrity.markCorrupt(`L2 table offset ${hexAlt(offset)} unaligned (L1 index: ${hexAlt(index)})`, this.tableOffset + index * 8)
    }
    return Effect.succeed(offset)
  }

  /**
   * The request fast path's view of entry `index`: its L2 table offset (0
   * when empty) when it passes every check of `l2Offset` and, with
   * `owned`, has COPIED set; undefined otherwise, and then the caller takes
   * the checked path, which reports the problem. Plain code, no allocation.
   */
  plainL2Offset(index: number, owned: boolean): number | undefined {
    if (index >= this.entries) return owned ? undefined : 0
    const b = this.bytes
    const o = index * 8
    const hi = ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0
    const lo = ((b[o + 4]! << 24) | (b[o + 5]! << 16) | (b[o + 6]! << 8) | b[o + 7]!) >>> 0
    if (owned && (hi & 0x80000000) === 0) return undefined
    const offHi = hi & 0x00ffffff
    if (offHi > 0x1fffff) return undefined
    const offset = offHi * 4294967296 + ((lo & 0xfffffe00) >>> 0)
    if (offset === 0) return owned ? undefined : 0
    return offset % this.clusterSize !== 0 ? undefined : offset
  }

  /** Whether entry `index` has COPIED set (its L2 table is not shared with a snapshot). */
  copied(index: number): boolean {
    return index < this.entries && readL1Entry(this.bytes, index).copied
  }

  /** Points entry `index` at the L2 table at `l2Offset` (COPIED), written through. */
  link(index: number, l2Offset: number): Effect.Effect<void, EngineFailure> {
    const entry = new Uint8Array(8)
    writeL1Entry(entry, 0, l2Offset, true)
    return Effect.map(Effect.andThen(debugPoint(this.storage, "l1_update"), this.storage.write(this.tableOffset + index * 8, entry)), () => {
      const previous = readL1Entry(this.bytes, index).l2Offset
      this.bytes.set(entry, index * 8)
      if (previous !== 0) this.integrity.overlaps.removeCluster("active L2 table", previous)
      this.integrity.overlaps.addCluster("active L2 table", l2Offset)
    })
  }

  /**
   * Empties entry `index`, written through, and returns the L2 table offset
   * it named (0 when it was empty). The caller frees that table after the
   * write is durable (rule 3).
   */
  unlink(index: number): Effect.Effect<number, EngineFailure> {
    if (index >= this.entries) return Effect.succeed(0)
    const previous = readL1Entry(this.bytes, index).l2Offset
    if (previous === 0 && readL1Entry(this.bytes, index).copied === false) return Effect.succeed(0)
    const entry = new Uint8Array(8)
    return Effect.map(Effect.andThen(debugPoint(this.storage, "l1_update"), this.storage.write(this.tableOffset + index * 8, entry)), () => {
      this.bytes.set(entry, index * 8)
      if (previous !== 0) this.integrity.overlaps.removeCluster("active L2 table", previous)
      return previous
    })
  }

  /**
   * Grows the table to at least `minEntries` entries: a new table is
   * allocated and written, the header switched to it, then the old one
   * freed (spec "L1 table"; QEMU grows by half again each time).
   */
  grow(minEntries: number, refcounts: Refcounts): Effect.Effect<void, EngineFailure> {
    const self = this
    return Effect.gen(function* () {
      if (minEntries <= self.entries) return
      const cs = self.clusterSize
      let entries = Math.max(minEntries, Math.ceil(self.entries * 1.5))
      if (entries * 8 > Limits.maxL1Bytes) entries = minEntries
      if (entries * 8 > Limits.maxL1Bytes) {
        return yield* new ClusterError({ reason: "InvalidArgument", message: `the L1 table would exceed ${Limits.maxL1Bytes} bytes` })
      }
      const clusters = Math.ceil((entries * 8) / cs)
      const table = new Uint8Array(clusters * cs)
      table.set(self.table)
      yield* debugPoint(self.storage, "l1_grow_alloc_table")
      const offset = yield* refcounts.allocate(clusters)
      yield* self.integrity.guardWrite(offset, clusters * cs)
      yield* refcounts.persistAllocations()
      // Only the entries are written, as QEMU does (a fresh image ends 8 bytes into cluster 3).
      yield* debugPoint(self.storage, "l1_grow_write_table")
      yield* self.storage.write(offset, table.subarray(0, entries * 8))
      yield* self.storage.flush()
      const old = { offset: self.tableOffset, size: self.entries }
      yield* debugPoint(self.storage, "l1_grow_activate_table")
      yield* self.header.update({ l1TableOffset: offset, l1Size: entries })
      self.replace(table, offset, entries)
      if (old.size > 0 && old.offset !== 0) yield* refcounts.free(old.offset, Math.ceil((old.size * 8) / cs) * cs)
    })
  }

  /**
   * Replaces every entry in place (a snapshot reverted to, COPIED flags
   * recomputed), written through with a flush after (rule 4); the table
   * keeps its offset and size. `table` holds at least l1_size entries.
   */
  overwrite(table: Uint8Array): Effect.Effect<void, EngineFailure> {
    const self = this
    return Effect.gen(function* () {
      const bytes = new Uint8Array(Math.max(self.entries * 8, 8))
      bytes.set(table.subarray(0, self.entries * 8))
      yield* self.integrity.guardWrite(self.tableOffset, self.entries * 8, ["active L1 table"])
      yield* self.storage.write(self.tableOffset, bytes.subarray(0, self.entries * 8))
      yield* self.storage.flush()
      self.replace(bytes, self.tableOffset, self.entries)
    })
  }

  /** Adopts the table a repair left on disk. */
  replace(table: Uint8Array, offset: number, entries: number): void {
    this.bytes = table
    this.tableOffset = offset
    this.entries = entries
    this.index()
  }

  private index(): void {
    const overlaps = this.integrity.overlaps
    overlaps.setRanges("active L1 table", [{ offset: this.tableOffset, length: this.entries * 8 }])
    overlaps.clearClusters("active L2 table")
    for (let i = 0; i < this.entries; i++) {
      let offset = 0
      try {
        offset = readL1Entry(this.bytes, i).l2Offset
      } catch {
        continue
      }
      if (offset !== 0 && offset % this.clusterSize === 0) overlaps.addCluster("active L2 table", offset)
    }
  }
}

