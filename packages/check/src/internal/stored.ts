import { Effect } from "effect"
import { rawOffsetUnaligned, rawRefcount, writeRefcount } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { reftableEntry } from "./entries.js"
import type { Io } from "./io.js"
import type { ImageInfo } from "./state.js"

const altHex = (n: number): string => (n === 0 ? "0" : "0x" + n.toString(16))

/** Result of looking up a stored refcount whose refcount block offset is not cluster aligned (QEMU: -EIO). */
export const UNREADABLE = -1

/** Marks a block whose offset is not cluster aligned. */
const UNALIGNED = new Uint8Array(0)
/** A block at an offset QEMU cannot read (bit 63 set: a negative int64): every read of it fails with EIO, without a corruption event. */
const PAST_INT64 = new Uint8Array(0)

/**
 * The refcounts stored in the image, read through the refcount table and its
 * blocks (QEMU's qcow2_get_refcount). Blocks are loaded on demand, once per
 * host offset; blocks past the end of the file read as zeros without being
 * read or kept. Updates stay in memory until `writeBack`.
 */
export class StoredRefcounts {
  private readonly blocks = new Map<number, Uint8Array>()
  private readonly dirty = new Set<number>()
  private readonly zeroBlock: Uint8Array
  private signaled = false
  /** The block of the last table index looked up (undefined: none; UNALIGNED: unusable). */
  private lastIndex = -1
  private lastBlock: Uint8Array | undefined = undefined

  private readonly perBlock: number
  private readonly order: number

  constructor(
    private readonly io: Io,
    private readonly img: ImageInfo,
    private readonly log: (message: string) => void
  ) {
    this.zeroBlock = new Uint8Array(img.clusterSize)
    this.perBlock = 2 ** img.refblockBits
    this.order = img.refcountOrder
  }

  /** Offset of refcount block `index` (bits 9-63 of the entry, reserved bits ignored; inexact above 2^53). */
  blockOffset(index: number): number {
    return index < this.img.reftableEntries ? reftableEntry(this.img.reftable, index).offset : 0
  }

  private blockUnaligned(index: number): boolean {
    return index < this.img.reftableEntries && rawOffsetUnaligned(reftableEntry(this.img.reftable, index).lo, this.img.clusterSize)
  }

  /** Loads the refcount block with table index `index`, if there is one to load. */
  load(index: number): Effect.Effect<void, StorageError> {
    const offset = this.blockOffset(index)
    if (offset === 0 || this.blocks.has(offset) || this.blockUnaligned(index) || offset >= this.img.fileSize) {
      return Effect.void
    }
    return this.io.read(offset, this.img.clusterSize).pipe(
      Effect.map((block) => {
        this.blocks.set(offset, block)
        this.lastIndex = -1
      })
    )
  }

  /** Whether the block holding the refcount of `cluster` still has to be loaded. */
  needsLoad(cluster: number): boolean {
    const index = Math.floor(cluster / this.perBlock)
    // The block `get` selected last is loaded when it is one of `blocks` (`load` drops the selection).
    if (index === this.lastIndex && this.lastBlock !== undefined && this.lastBlock !== UNALIGNED && this.lastBlock !== PAST_INT64 && this.lastBlock !== this.zeroBlock) return false
    const offset = this.blockOffset(index)
    return offset !== 0 && offset < this.img.fileSize && !this.blockUnaligned(index) && !this.blocks.has(offset)
  }

  /** Loads the block holding the refcount of `cluster`. */
  loadFor(cluster: number): Effect.Effect<void, StorageError> {
    return this.load(Math.floor(cluster / this.perBlock))
  }

  private block(index: number): Uint8Array | undefined {
    const offset = this.blockOffset(index)
    if (offset === 0) return undefined
    return this.blocks.get(offset) ?? this.zeroBlock
  }

  /**
   * The stored refcount of `cluster` (its block must have been loaded), or
   * UNREADABLE when the block offset is unaligned; the first such lookup
   * reports the corruption as QEMU's qcow2_signal_corruption does.
   */
  get(cluster: number): number {
    const index = Math.floor(cluster / this.perBlock)
    if (index !== this.lastIndex) this.select(index)
    const block = this.lastBlock
    if (block === undefined) return 0
    if (block === PAST_INT64) return UNREADABLE
    if (block === UNALIGNED) {
      if (!this.signaled) {
        this.signaled = true
        this.log(
          `qcow2: Image is corrupt: Refblock offset ${altHex(this.blockOffset(index))} unaligned (reftable index: ${altHex(index)}); further non-fatal corruption events will be suppressed`
        )
      }
      return UNREADABLE
    }
    return rawRefcount(block, cluster - index * this.perBlock, this.order)
  }

  /**
   * The stored refcount of `cluster` in decimal as qemu-img prints it:
   * exact also for a 64-bit entry past 2^53 (`get` rounds those).
   */
  text(cluster: number): string {
    const value = this.get(cluster)
    const block = this.lastBlock
    if (this.order !== 6 || value <= Number.MAX_SAFE_INTEGER || block === undefined || block === UNALIGNED || block === PAST_INT64) return String(value)
    const index = cluster - Math.floor(cluster / this.perBlock) * this.perBlock
    return new DataView(block.buffer, block.byteOffset + index * 8, 8).getBigUint64(0).toString()
  }

  /** Looks up the block of table index `index` once for a run of clusters. */
  private select(index: number): void {
    this.lastIndex = index
    if (index >= this.img.reftableEntries || this.blockOffset(index) === 0) this.lastBlock = undefined
    else if (this.blockUnaligned(index)) this.lastBlock = UNALIGNED
    else if (this.blockOffset(index) >= 2 ** 63) this.lastBlock = PAST_INT64
    else this.lastBlock = this.block(index)
  }

  /**
   * Sets the stored refcount of `cluster`; its block must exist inside the
   * file and be aligned (the caller has seen a non-zero refcount there).
   */
  set(cluster: number, value: number): void {
    const index = Math.floor(cluster / this.perBlock)
    const offset = this.blockOffset(index)
    const block = this.blocks.get(offset)
    if (block === undefined) return
    writeRefcount(block, cluster - index * this.perBlock, this.order, value)
    this.dirty.add(offset)
  }

  /** Writes every changed block back (one cluster each) and flushes. */
  writeBack(): Effect.Effect<void, StorageError> {
    if (this.dirty.size === 0) return Effect.void
    const offsets = [...this.dirty].sort((a, b) => a - b)
    this.dirty.clear()
    return Effect.forEach(offsets, (o) => this.io.write(o, this.blocks.get(o)!), { discard: true }).pipe(
      Effect.andThen(this.io.flush())
    )
  }

  /** Forgets every loaded block (after the refcount structure was replaced). */
  reset(): void {
    this.blocks.clear()
    this.dirty.clear()
    this.lastIndex = -1
  }
}
