import { Effect } from "effect"
import { readRefcount, writeRefcount } from "@qcow2/format"
import type { ImageError } from "../errors.js"
import type { Io } from "./io.js"
import { TWO_32, altHex, be32, hexNum } from "./bytes.js"
import type { ImageInfo } from "./state.js"

/** Result of looking up a stored refcount whose refcount block offset is not cluster aligned (QEMU: -EIO). */
export const UNREADABLE = -1

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

  constructor(
    private readonly io: Io,
    private readonly img: ImageInfo,
    private readonly log: (message: string) => void
  ) {
    this.zeroBlock = new Uint8Array(img.clusterSize)
  }

  /** Refcount table entry `index` as hi/lo words (zero past the table or the file). */
  private entry(index: number): { hi: number; lo: number } {
    if (index >= this.img.reftableEntries) return { hi: 0, lo: 0 }
    return { hi: be32(this.img.reftable, index * 8), lo: be32(this.img.reftable, index * 8 + 4) }
  }

  /** Offset of refcount block `index` (bits 9-63 of the entry; inexact above 2^53). */
  blockOffset(index: number): number {
    const { hi, lo } = this.entry(index)
    return hi * TWO_32 + ((lo & 0xfffffe00) >>> 0)
  }

  private blockUnaligned(index: number): boolean {
    return (this.entry(index).lo & (this.img.clusterSize - 1) & 0xfffffe00) !== 0
  }

  /** Loads the refcount block with table index `index`, if there is one to load. */
  load(index: number): Effect.Effect<void, ImageError> {
    const offset = this.blockOffset(index)
    if (offset === 0 || this.blocks.has(offset) || this.blockUnaligned(index) || offset >= this.img.fileSize) {
      return Effect.void
    }
    return this.io.read(offset, this.img.clusterSize).pipe(
      Effect.map((block) => {
        this.blocks.set(offset, block)
      })
    )
  }

  /** Loads the blocks covering clusters `[first, last]`. */
  loadRange(first: number, last: number): Effect.Effect<void, ImageError> {
    const bits = this.img.refblockBits
    const from = Math.floor(first / 2 ** bits)
    const to = Math.floor(last / 2 ** bits)
    if (from === to) return this.load(from)
    return Effect.forEach(
      Array.from({ length: to - from + 1 }, (_, i) => from + i),
      (i) => this.load(i),
      { discard: true }
    )
  }

  /** Loads the blocks covering every cluster in `clusters`. */
  loadFor(clusters: Iterable<number>): Effect.Effect<void, ImageError> {
    const indices = new Set<number>()
    for (const c of clusters) indices.add(Math.floor(c / 2 ** this.img.refblockBits))
    return Effect.forEach(indices, (i) => this.load(i), { discard: true })
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
    const bits = this.img.refblockBits
    const index = Math.floor(cluster / 2 ** bits)
    if (index >= this.img.reftableEntries) return 0
    if (this.blockOffset(index) === 0) return 0
    if (this.blockUnaligned(index)) {
      if (!this.signaled) {
        this.signaled = true
        this.log(
          `qcow2: Image is corrupt: Refblock offset ${altHex(hexNum(this.blockOffset(index)))} unaligned (reftable index: ${altHex(hexNum(index))}); further non-fatal corruption events will be suppressed`
        )
      }
      return UNREADABLE
    }
    const block = this.block(index)!
    const i = cluster - index * 2 ** bits
    if (this.img.refcountOrder === 6) return be32(block, i * 8) * TWO_32 + be32(block, i * 8 + 4)
    return readRefcount(block, i, this.img.refcountOrder)
  }

  /**
   * Sets the stored refcount of `cluster`; its block must exist inside the
   * file and be aligned (the caller has seen a non-zero refcount there).
   */
  set(cluster: number, value: number): void {
    const bits = this.img.refblockBits
    const index = Math.floor(cluster / 2 ** bits)
    const offset = this.blockOffset(index)
    const block = this.blocks.get(offset)
    if (block === undefined) return
    writeRefcount(block, cluster - index * 2 ** bits, this.img.refcountOrder, value)
    this.dirty.add(offset)
  }

  /** Writes every changed block back (one cluster each) and flushes. */
  writeBack(): Effect.Effect<void, ImageError> {
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
  }
}
