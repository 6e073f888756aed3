import { Effect } from "effect"
import type { MetadataLock } from "./lock.js"
import { BITMAP_TYPE_DIRTY_TRACKING, BitmapFlag, BitmapLimits, bitmapDataBytes, bitmapDirectoryEntrySize, Limits } from "@qcow2/format"
import type { BitmapDirectoryEntry } from "@qcow2/format"
import { BitmapBits } from "./bitmap-bits.js"
import { freeBitmapClusters, writeBitmap, writeDirectory } from "./bitmaps-disk.js"
import type { BitmapDisk, LoadedBitmaps } from "./bitmaps-disk.js"
import { ImageError } from "./errors.js"
import type { EngineFailure } from "./errors.js"

/** A persistent bitmap as `qemu-img bitmap` and `convert --bitmaps` see it. */
export interface BitmapInfo {
  readonly name: string
  readonly granularity: number
  /** Tracks writes (the auto flag). */
  readonly enabled: boolean
  /** Was in use on open (an unclean shutdown): its bits are unknown, it cannot be used, only removed. */
  readonly inconsistent: boolean
  /** Belongs to an image opened read-only. */
  readonly readOnly: boolean
}

/** The bits of a bitmap, for merging into another (possibly of another image). */
export interface BitmapContents {
  readonly name: string
  readonly granularity: number
  /** Guest bytes the bitmap covers. */
  readonly size: number
  /** undefined when the bitmap is inconsistent (in use at open). */
  readonly bits: Uint8Array | undefined
}

/** What users of an open image do with its persistent bitmaps (`qemu-img bitmap`, `convert --bitmaps`). */
export type PersistentBitmaps = Pick<DirtyBitmaps, "list" | "contents" | "add" | "remove" | "clear" | "enable" | "disable" | "merge">

/** One bitmap held in memory while its image is open. */
interface Bitmap {
  readonly name: string
  readonly granularityBits: number
  readonly granularity: number
  enabled: boolean
  readonly inconsistent: boolean
  /** undefined when inconsistent. */
  bits: BitmapBits | undefined
}

/** How the bitmaps reach the engine's metadata: its parts, its lock, its error presentation. */
export interface BitmapEnvironment extends BitmapDisk {
  readonly readOnly: boolean
  readonly version: 2 | 3
  readonly location: string
  /** The engine's metadata lock. */
  readonly lock: MetadataLock
  /** Runs a metadata change the engine's way: lazy-refcount dirty bit first, failures as ImageError, damage marks the image corrupt. */
  readonly change: (effect: Effect.Effect<void, EngineFailure>) => Effect.Effect<void, ImageError>
}

/**
 * The persistent dirty bitmaps of one open image, and the only owner of
 * their state (QEMU's BdrvDirtyBitmap list plus qcow2-bitmap.c).
 *
 * On a read-write open every bitmap not in use is loaded and marked in use
 * on disk (`loadBitmaps`); each guest write, write-zeroes, discard and
 * compressed write calls `mark`, which sets the bits of the enabled ones.
 * `store` (on close, as QEMU's qcow2_inactivate) writes them back to new
 * clusters with in_use cleared, and frees the old ones. Bitmaps in use at
 * open stay as they are on disk. `add`, `clear`, `enable`, `disable` and
 * `merge` change memory only (stored on close); `remove` changes the disk
 * at once, as QEMU's block-dirty-bitmap-remove does.
 */
export class DirtyBitmaps {
  /** Newest first, like QEMU's list (loaded ones in reverse directory order). */
  private held: Bitmap[]
  /** Guest bytes every bitmap covers: the virtual size. */
  private size: number
  /** The directory as it is on disk. */
  private directory: ReadonlyArray<BitmapDirectoryEntry>
  /** The enabled bitmaps with bits, for `mark`. */
  private tracking: Bitmap[] = []

  constructor(
    private readonly env: BitmapEnvironment,
    loaded: LoadedBitmaps,
    virtualSize: number
  ) {
    this.directory = loaded.directory
    this.size = virtualSize
    this.held = loaded.bitmaps
      .map((b) => ({
        name: b.name,
        granularityBits: b.granularityBits,
        granularity: 2 ** b.granularityBits,
        enabled: b.enabled,
        inconsistent: b.inconsistent,
        bits: b.bits === undefined ? undefined : new BitmapBits(b.bits, 2 ** b.granularityBits, env.clusterSize, b.dirtyClusters)
      }))
      .reverse()
    this.retrack()
  }

  /** Sets the bits covering guest bytes [offset, offset + length) in every enabled bitmap. */
  mark(offset: number, length: number): void {
    for (const b of this.tracking) b.bits!.mark(offset, length)
  }

  /** The bitmaps, in QEMU's order (newest first; loaded ones in reverse directory order). */
  list(): ReadonlyArray<BitmapInfo> {
    return this.held.map((b) => ({ name: b.name, granularity: b.granularity, enabled: b.enabled, inconsistent: b.inconsistent, readOnly: this.env.readOnly }))
  }

  /** A copy of a bitmap's bits (undefined when it is inconsistent). Fails for a missing bitmap. */
  contents(name: string): Effect.Effect<BitmapContents, ImageError> {
    return Effect.suspend(() => {
      const b = this.find(name)
      if (b === undefined) return Effect.fail(this.notFound(name))
      return Effect.succeed({ name: b.name, granularity: b.granularity, size: this.size, bits: b.bits?.bits.slice() })
    })
  }

  /**
   * Adds an empty persistent bitmap (QEMU's block-dirty-bitmap-add with
   * persistent=on), stored on close. `granularity` defaults to the
   * cluster size within 4 KiB..64 KiB.
   */
  add(name: string, granularity: number, disabled: boolean): Effect.Effect<void, ImageError> {
    return Effect.suspend(() => {
      if (name === "") return Effect.fail(this.invalid("Bitmap name cannot be empty"))
      if (!Number.isInteger(granularity) || granularity < 512 || granularity > 2 ** 31 || (granularity & (granularity - 1)) !== 0) {
        return Effect.fail(this.invalid("Granularity must be power of 2 and at least 512"))
      }
      if (this.find(name) !== undefined) return Effect.fail(this.invalid(`Bitmap already exists: ${name}`))
      const refused = this.cannotStore(name, granularity)
      if (refused !== undefined) return Effect.fail(this.invalid(`Can't make bitmap '${name}' persistent in '${nodeName()}': ${refused}`))
      const granularityBits = Math.log2(granularity)
      this.held.unshift({
        name,
        granularityBits,
        granularity,
        enabled: !disabled,
        inconsistent: false,
        bits: new BitmapBits(new Uint8Array(bitmapDataBytes(this.size, granularityBits)), granularity, this.env.clusterSize)
      })
      this.retrack()
      return Effect.void
    })
  }

  /** Removes a bitmap from memory and, when it is on disk, from the image at once (new directory, its clusters freed). */
  remove(name: string): Effect.Effect<void, ImageError> {
    const self = this
    return Effect.suspend(() => {
      const b = this.find(name)
      if (b === undefined) return Effect.fail(this.notFound(name))
      if (this.env.readOnly) return Effect.fail(this.invalid(`Bitmap '${name}' is readonly and cannot be modified`))
      const onDisk = this.directory.find((e) => e.name === name)
      const drop = Effect.sync(() => {
        this.held = this.held.filter((x) => x !== b)
        this.retrack()
      })
      if (onDisk === undefined) return drop
      return this.env.lock.withPermits(1)(
        this.env.change(
          Effect.gen(function* () {
            const rest = self.directory.filter((e) => e !== onDisk)
            yield* writeDirectory(self.env, rest)
            self.directory = rest
            yield* drop
            yield* freeBitmapClusters(self.env, onDisk.tableOffset, onDisk.tableSize)
          })
        )
      )
    })
  }

  /** Clears every bit (QEMU's block-dirty-bitmap-clear). */
  clear(name: string): Effect.Effect<void, ImageError> {
    return this.modify(name, true, (b) => b.bits!.clear())
  }

  /** Starts tracking writes in the bitmap (qemu-img bitmap --enable). */
  enable(name: string): Effect.Effect<void, ImageError> {
    return this.modify(name, false, (b) => (b.enabled = true))
  }

  /** Stops tracking writes in the bitmap (qemu-img bitmap --disable). */
  disable(name: string): Effect.Effect<void, ImageError> {
    return this.modify(name, false, (b) => (b.enabled = false))
  }

  /**
   * ORs `source` (of this image or another of the same size) into bitmap
   * `name` (QEMU's block-dirty-bitmap-merge): the target must be writable
   * and consistent, the source consistent, both of one size.
   */
  merge(name: string, source: BitmapContents): Effect.Effect<void, ImageError> {
    return this.modify(
      name,
      true,
      (b) => b.bits!.merge(source.bits!, source.granularity, this.size),
      () => {
        if (source.bits === undefined) return this.inconsistentError(source.name)
        if (this.size === source.size) return undefined
        return this.invalid(`Bitmaps are of different sizes (destination size is ${this.size}, source size is ${source.size}) and can't be merged`)
      }
    )
  }

  /** Why the virtual size cannot change (QEMU's qcow2_truncate_bitmaps_check), if it cannot. */
  refuseResize(): ImageError | undefined {
    // QEMU walks the directory on disk, in its order.
    for (const e of this.directory) {
      const b = this.find(e.name)
      if (b === undefined) continue
      if (this.env.readOnly) return this.invalid(`Bitmap '${b.name}' is readonly and cannot be modified`)
      if (b.inconsistent) return this.inconsistentError(b.name)
    }
    return undefined
  }

  /** Follows a change of the virtual size: new bits clear, bits past the end dropped. */
  resize(size: number): void {
    this.size = size
    for (const b of this.held) {
      if (b.bits !== undefined) b.bits = b.bits.resized(size, bitmapDataBytes(size, b.granularityBits))
    }
    this.retrack()
  }

  /**
   * Writes every consistent bitmap back (QEMU's
   * qcow2_store_persistent_dirty_bitmaps on close): data and tables to new
   * clusters, a new directory with in_use cleared and the auto flag as
   * enabled, then the old tables freed. Bitmaps in use at open keep their
   * entries. Nothing to do on read-only or corrupt images. Afterwards the
   * stored bitmaps are released: this is the last thing a session does.
   */
  store(): Effect.Effect<void, ImageError> {
    const self = this
    const env = this.env
    if (env.readOnly || env.integrity.isCorrupt || this.held.every((b) => b.inconsistent)) return Effect.void
    return env.lock.withPermits(1)(
      env.change(
        Effect.gen(function* () {
          const entries = self.directory.map((e) => ({ ...e }))
          const mine = new Map<BitmapDirectoryEntry, Bitmap>()
          const dropTables: Array<{ offset: number; size: number }> = []
          for (const b of self.held) {
            if (b.inconsistent) continue
            const at = entries.findIndex((e) => e.name === b.name)
            if (at >= 0) dropTables.push({ offset: entries[at]!.tableOffset, size: entries[at]!.tableSize })
            const entry: BitmapDirectoryEntry = {
              tableOffset: 0,
              tableSize: 0,
              flags: b.enabled ? BitmapFlag.Auto : 0,
              type: BITMAP_TYPE_DIRTY_TRACKING,
              granularityBits: b.granularityBits,
              name: b.name,
              extraData: new Uint8Array(0)
            }
            if (at >= 0) entries[at] = entry
            else entries.push(entry)
            mine.set(entry, b)
          }
          for (let i = 0; i < entries.length; i++) {
            const b = mine.get(entries[i]!)
            if (b === undefined) continue
            const table = yield* writeBitmap(env, b.bits!, b.granularityBits, self.size)
            entries[i] = { ...entries[i]!, ...table }
          }
          yield* writeDirectory(env, entries)
          self.directory = entries
          // Stored bitmaps are released (QEMU's release_stored): nothing marks them any more.
          self.held = self.held.filter((b) => b.inconsistent)
          self.retrack()
          for (const t of dropTables) yield* freeBitmapClusters(env, t.offset, t.size)
        })
      )
    )
  }

  private find(name: string): Bitmap | undefined {
    return this.held.find((b) => b.name === name)
  }

  private retrack(): void {
    this.tracking = this.held.filter((b) => b.enabled && b.bits !== undefined && !this.env.readOnly)
  }

  /** A change of one bitmap in memory, after QEMU's checks (read-only when `writes`, inconsistent always). */
  private modify(name: string, writes: boolean, apply: (b: Bitmap) => void, extra?: (b: Bitmap) => ImageError | undefined): Effect.Effect<void, ImageError> {
    return Effect.suspend(() => {
      const b = this.find(name)
      if (b === undefined) return Effect.fail(this.notFound(name))
      if (writes && this.env.readOnly) return Effect.fail(this.invalid(`Bitmap '${name}' is readonly and cannot be modified`))
      if (b.inconsistent) return Effect.fail(this.inconsistentError(b.name))
      const bad = extra?.(b)
      if (bad !== undefined) return Effect.fail(bad)
      apply(b)
      this.retrack()
      return Effect.void
    })
  }

  /** Why a new bitmap cannot be stored in this image (QEMU's qcow2_co_can_store_new_dirty_bitmap), if it cannot. */
  private cannotStore(name: string, granularity: number): string | undefined {
    if (this.env.version < 3) return "Cannot store dirty bitmaps in qcow2 v2 files"
    if (this.env.readOnly) return "Cannot store dirty bitmaps in a read-only image"
    const dataBytes = Math.ceil(Math.ceil(this.size / granularity) / 8)
    if (dataBytes > BitmapLimits.maxDataBytes || dataBytes > BitmapLimits.maxTableEntries * this.env.clusterSize) {
      return "Too much space will be occupied by the bitmap. Use larger granularity"
    }
    if (new TextEncoder().encode(name).length > 1023) return "Name length exceeds maximum (1023 characters)"
    if (this.held.length + 1 > Limits.maxBitmaps) return "Maximum number of persistent bitmaps is already reached"
    let directory = bitmapDirectoryEntrySize(name)
    for (const b of this.held) directory += bitmapDirectoryEntrySize(b.name)
    if (directory > BitmapLimits.maxDirectoryBytes) return "Not enough space in the bitmap directory"
    return undefined
  }

  private notFound(name: string): ImageError {
    return this.invalid(`Dirty bitmap '${name}' not found`)
  }

  private inconsistentError(name: string): ImageError {
    return this.invalid(`Bitmap '${name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`)
  }

  private invalid(message: string): ImageError {
    return new ImageError({ reason: "InvalidArgument", message, location: this.env.location })
  }
}

/** QEMU names an image opened by qemu-img after an automatic node name, "#block" and a counter with two random digits. */
const nodeName = (): string => `#block1${String(Math.floor(Math.random() * 100)).padStart(2, "0")}`
