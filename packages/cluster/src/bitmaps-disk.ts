/**
 * Persistent bitmaps on disk (qcow2.txt "Bitmaps"): loading them on open,
 * marking them in use, writing a bitmap's data and table, replacing the
 * directory, freeing a bitmap's clusters. What QEMU's block/qcow2-bitmap.c
 * does, written from the spec; the order of writes keeps the image
 * consistent at every step (a crash leaks clusters at worst).
 */
import { Effect } from "effect"
import type { Refcounts } from "@qcow2/alloc"
import {
  AutoclearFeature,
  BitmapFlag,
  BitmapLimits,
  bitmapDataBytes,
  bitmapDirectorySize,
  bitmapTableEntries,
  BITMAP_TYPE_DIRTY_TRACKING,
  decodeBitmapDirectory,
  encodeBitmapDirectory,
  readBitmapTableEntry,
  writeBitmapTableEntry
} from "@qcow2/format"
import type { BitmapDirectoryEntry, ImageHeader } from "@qcow2/format"
import type { BlockStorageShape } from "@qcow2/storage"
import type { BitmapBits } from "./bitmap-bits.js"
import { ClusterError, ImageError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { HeaderState } from "./header.js"
import type { Integrity } from "./integrity.js"

/** One bitmap as read on open. */
export interface LoadedBitmap {
  readonly name: string
  readonly granularityBits: number
  /** The auto flag: the bitmap tracks writes. */
  readonly enabled: boolean
  /** in_use was set on open (an unclean shutdown): the data are not to be trusted and are not loaded. */
  readonly inconsistent: boolean
  /** The bits (bitmapDataBytes long), undefined when inconsistent. */
  readonly bits: Uint8Array | undefined
  /** Per bitmap table entry: 1 where the stored cluster may hold set bits (data or all ones). */
  readonly dirtyClusters: Uint8Array | undefined
}

/** The persistent bitmaps of an image as its opener read them. */
export interface LoadedBitmaps {
  /** The directory as it is on disk now (in_use set on a read-write open). */
  readonly directory: ReadonlyArray<BitmapDirectoryEntry>
  /** The bitmaps, in directory order. */
  readonly bitmaps: ReadonlyArray<LoadedBitmap>
  /** The header after the open changed it (the in_use update rewrites the autoclear bit). */
  readonly image: ImageHeader
}

/** What the disk side of the bitmaps works with: the engine's own parts. */
export interface BitmapDisk {
  readonly storage: BlockStorageShape
  readonly header: HeaderState
  readonly integrity: Integrity
  readonly refcounts: Refcounts
  readonly clusterSize: number
}

/** Most bitmap bytes one open keeps in memory (QEMU's per-bitmap limit is 512 MiB). */
const MAX_LOADED_BYTES = 1024 * 1024 * 1024

const refuse = (location: string, message: string, reason: "Corrupt" | "InvalidArgument" = "Corrupt"): ImageError =>
  new ImageError({ reason, message, location })

/** Whether the image's bitmaps extension is in force (v3, autoclear bit set, at least one bitmap). */
export const bitmapsInForce = (image: ImageHeader): boolean =>
  image.extensions.bitmaps !== undefined &&
  image.extensions.bitmaps.nbBitmaps > 0 &&
  (image.header.autoclearFeatures & AutoclearFeature.Bitmaps) !== 0n

/**
 * Why QEMU refuses this directory entry (check_dir_entry), if it does:
 * reserved flags, wrong type, granularity, table placement and size, and a
 * table too small for the image unless the bitmap is in use.
 */
function entryRefused(e: BitmapDirectoryEntry, clusterSize: number, virtualSize: number): boolean {
  const physBytes = e.tableSize * clusterSize
  return (
    e.tableSize === 0 ||
    e.tableOffset === 0 ||
    e.tableOffset % clusterSize !== 0 ||
    e.tableSize > BitmapLimits.maxTableEntries ||
    e.granularityBits > BitmapLimits.maxGranularityBits ||
    e.granularityBits < BitmapLimits.minGranularityBits ||
    (e.flags & ~(BitmapFlag.InUse | BitmapFlag.Auto)) !== 0 ||
    e.type !== BITMAP_TYPE_DIRTY_TRACKING ||
    physBytes > BitmapLimits.maxDataBytes ||
    ((e.flags & BitmapFlag.InUse) === 0 && virtualSize > physBytes * 8 * 2 ** e.granularityBits)
  )
}

/**
 * Loads the persistent bitmaps on open, as QEMU does on every open
 * (qcow2_load_dirty_bitmaps): validates the directory, reads the data of
 * every bitmap not in use, and on a read-write open marks them in use in
 * the directory, in place, before anything else is written (the autoclear
 * bit is cleared around the rewrite so that a crash in between loses the
 * bitmaps instead of trusting a half-written directory).
 */
export function loadBitmaps(
  storage: BlockStorageShape,
  image: ImageHeader,
  readOnly: boolean,
  virtualSize: number
): Effect.Effect<LoadedBitmaps, ImageError> {
  const location = storage.location
  const ext = image.extensions.bitmaps
  if (ext === undefined) return Effect.succeed({ directory: [], bitmaps: [], image })
  if (!bitmapsInForce(image)) {
    // A program without bitmap support wrote the image (the autoclear bit is
    // gone): the bitmaps are void. A writer drops the extension, as QEMU
    // does; their clusters leak until `check -r`.
    if (readOnly) return Effect.succeed({ directory: [], bitmaps: [], image })
    const { bitmaps: _void, ...extensions } = image.extensions
    const header = new HeaderState(storage, image)
    return Effect.as(io(rewriteHeader(header, { ...image, extensions }), location), { directory: [], bitmaps: [], image: header.image })
  }
  const clusterSize = 2 ** image.header.clusterBits
  return Effect.gen(function* () {
    if (ext.directorySize === 0) return yield* refuse(location, "Requested bitmap directory size is zero")
    if (ext.directorySize > BitmapLimits.maxDirectoryBytes) return yield* refuse(location, "Requested bitmap directory size is too big")
    const bytes = new Uint8Array(ext.directorySize)
    yield* io(storage.read(ext.directoryOffset, bytes), location)
    let directory: BitmapDirectoryEntry[]
    try {
      directory = decodeBitmapDirectory(bytes, ext.nbBitmaps)
    } catch {
      return yield* refuse(location, "Broken bitmap directory")
    }
    if (bitmapDirectorySize(directory) !== ext.directorySize) return yield* refuse(location, "Broken bitmap directory")
    // The whole directory is judged before any bitmap is loaded (QEMU's bitmap_list_load).
    for (const e of directory) {
      if (e.extraData.length !== 0) return yield* refuse(location, "Bitmap extra data is not supported")
      if (entryRefused(e, clusterSize, virtualSize)) return yield* refuse(location, `Bitmap '${e.name}' doesn't satisfy the constraints`)
    }
    let loadedBytes = 0
    const bitmaps: LoadedBitmap[] = []
    for (const e of directory) {
      if (bitmaps.some((b) => b.name === e.name)) return yield* refuse(location, `Bitmap already exists: ${e.name}`)
      const inconsistent = (e.flags & BitmapFlag.InUse) !== 0
      let data: { bits: Uint8Array; dirtyClusters: Uint8Array } | undefined
      if (!inconsistent) {
        loadedBytes += bitmapDataBytes(virtualSize, e.granularityBits)
        if (loadedBytes > MAX_LOADED_BYTES) return yield* refuse(location, `Could not read bitmap '${e.name}' from image: Cannot allocate memory`)
        data = yield* readBitmapData(storage, e, clusterSize, virtualSize)
      }
      bitmaps.push({
        name: e.name,
        granularityBits: e.granularityBits,
        enabled: (e.flags & BitmapFlag.Auto) !== 0,
        inconsistent,
        bits: data?.bits,
        dirtyClusters: data?.dirtyClusters
      })
    }
    if (readOnly || bitmaps.every((b) => b.inconsistent)) return { directory, bitmaps, image }
    const marked = directory.map((e) => ({ ...e, flags: e.flags | BitmapFlag.InUse }))
    const header = new HeaderState(storage, image)
    const autoclear = image.header.autoclearFeatures
    yield* io(header.update({ autoclearFeatures: autoclear & ~AutoclearFeature.Bitmaps }), location)
    yield* io(storage.write(ext.directoryOffset, encodeBitmapDirectory(marked)), location)
    yield* io(header.update({ autoclearFeatures: autoclear }), location)
    return { directory: marked, bitmaps, image: header.image }
  })
}

const io = <A>(effect: Effect.Effect<A, EngineFailure>, location: string): Effect.Effect<A, ImageError> =>
  Effect.mapError(effect, (e) => (e._tag === "ImageError" ? e : new ImageError({ reason: "Storage", message: e.message, location, cause: e })))

/** Reads a bitmap's table (every entry checked) and data (QEMU's bitmap_table_load + load_bitmap_data). */
function readBitmapData(
  storage: BlockStorageShape,
  e: BitmapDirectoryEntry,
  clusterSize: number,
  virtualSize: number
): Effect.Effect<{ bits: Uint8Array; dirtyClusters: Uint8Array }, ImageError> {
  const location = storage.location
  return Effect.gen(function* () {
    const table = new Uint8Array(e.tableSize * 8)
    yield* io(storage.read(e.tableOffset, table), location)
    const entries = readTable(table, e.tableSize, clusterSize)
    if (entries === undefined) return yield* refuse(location, `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`)
    if (e.tableSize !== bitmapTableEntries(virtualSize, e.granularityBits, clusterSize)) {
      return yield* refuse(location, `Could not read bitmap '${e.name}' from image: Invalid argument`)
    }
    const bits = new Uint8Array(bitmapDataBytes(virtualSize, e.granularityBits))
    const dirtyClusters = new Uint8Array(entries.length)
    const cluster = new Uint8Array(clusterSize)
    for (let i = 0; i < entries.length; i++) {
      const at = i * clusterSize
      const part = bits.subarray(at, Math.min(bits.length, at + clusterSize))
      const entry = entries[i]!
      if (entry.offset !== 0) {
        yield* io(storage.read(entry.offset, cluster), location)
        part.set(cluster.subarray(0, part.length))
        dirtyClusters[i] = 1
      } else if (entry.allOnes) {
        part.fill(0xff)
        dirtyClusters[i] = 1
      }
    }
    return { bits, dirtyClusters }
  })
}

/** The entries of a bitmap table, or undefined when one is invalid (QEMU's check_table_entry). */
function readTable(table: Uint8Array, size: number, clusterSize: number): Array<{ offset: number; allOnes: boolean }> | undefined {
  const out: Array<{ offset: number; allOnes: boolean }> = []
  for (let i = 0; i < size; i++) {
    let entry
    try {
      entry = readBitmapTableEntry(table, i)
    } catch {
      return undefined
    }
    if (entry.reservedBitsSet || entry.offset % clusterSize !== 0) return undefined
    out.push({ offset: entry.offset, allOnes: entry.allOnes })
  }
  return out
}

/**
 * Writes one bitmap's data and table to new clusters (QEMU's store_bitmap):
 * a data cluster for every table entry whose part of the bitmap has a bit
 * set, all-zero parts left as zero entries. Returns the table's place.
 */
export function writeBitmap(
  disk: BitmapDisk,
  data: BitmapBits,
  granularityBits: number,
  virtualSize: number
): Effect.Effect<{ readonly tableOffset: number; readonly tableSize: number }, EngineFailure> {
  const cs = disk.clusterSize
  return Effect.gen(function* () {
    const tableSize = bitmapTableEntries(virtualSize, granularityBits, cs)
    const table = new Uint8Array(tableSize * 8)
    const cluster = new Uint8Array(cs)
    for (let i = 0; i < tableSize; i++) {
      if (!data.clusterDirty(i)) continue
      const from = i * cs
      const to = Math.min(data.bits.length, from + cs)
      const offset = yield* disk.refcounts.allocate(1)
      cluster.fill(0)
      cluster.set(data.bits.subarray(from, to))
      yield* disk.integrity.guardWrite(offset, cs)
      yield* disk.storage.write(offset, cluster)
      writeBitmapTableEntry(table, i, offset, false)
    }
    const tableClusters = Math.ceil(table.length / cs)
    const tableOffset = yield* disk.refcounts.allocate(tableClusters)
    yield* writeInNewClusters(disk, tableOffset, table, tableClusters)
    return { tableOffset, tableSize }
  })
}

/**
 * Writes a bitmap table or directory at the start of `clusters` freshly
 * allocated clusters: the rest of the clusters is zeroed where it lies inside
 * the file, but the file is not grown past the structure's last byte (QEMU
 * writes just the structure, so a file ending with one is that long).
 */
function writeInNewClusters(disk: BitmapDisk, offset: number, bytes: Uint8Array, clusters: number): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const room = clusters * disk.clusterSize
    const fileSize = yield* disk.storage.size()
    const length = Math.max(bytes.length, Math.min(room, fileSize - offset))
    const padded = new Uint8Array(length)
    padded.set(bytes)
    yield* disk.integrity.guardWrite(offset, room)
    yield* disk.storage.write(offset, padded)
  })
}

/**
 * Replaces the bitmap directory with `entries` (QEMU's
 * update_ext_header_and_dir): the new directory goes to new clusters, its
 * refcounts and bytes are durable before the header names it, and the old
 * directory is freed after. No entries: the extension and the autoclear bit go.
 */
export function writeDirectory(disk: BitmapDisk, entries: ReadonlyArray<BitmapDirectoryEntry>): Effect.Effect<void, EngineFailure> {
  const cs = disk.clusterSize
  return Effect.gen(function* () {
    const current = disk.header.image
    const old = bitmapsInForce(current) ? current.extensions.bitmaps : undefined
    const h = current.header
    let next: ImageHeader
    if (entries.length === 0) {
      const { bitmaps: _dropped, ...extensions } = current.extensions
      next = { ...current, header: { ...h, autoclearFeatures: h.autoclearFeatures & ~AutoclearFeature.Bitmaps }, extensions }
    } else {
      const bytes = encodeBitmapDirectory(entries)
      const clusters = Math.ceil(bytes.length / cs)
      const offset = yield* disk.refcounts.allocate(clusters)
      yield* writeInNewClusters(disk, offset, bytes, clusters)
      yield* disk.refcounts.cache.flush()
      next = {
        ...current,
        header: { ...h, autoclearFeatures: h.autoclearFeatures | AutoclearFeature.Bitmaps },
        extensions: { ...current.extensions, bitmaps: { nbBitmaps: entries.length, directorySize: bytes.length, directoryOffset: offset } }
      }
    }
    yield* rewriteHeader(disk.header, next)
    const placed = next.extensions.bitmaps
    disk.integrity.overlaps.setRanges("bitmap directory", placed !== undefined ? [{ offset: placed.directoryOffset, length: placed.directorySize }] : [])
    if (old !== undefined && old.directorySize > 0) yield* disk.refcounts.free(old.directoryOffset, old.directorySize)
  })
}

const rewriteHeader = (header: HeaderState, next: ImageHeader): Effect.Effect<void, EngineFailure> =>
  Effect.suspend((): Effect.Effect<void, EngineFailure> => {
    try {
      return header.rewriteAll(next)
    } catch (e) {
      return Effect.fail(new ClusterError({ reason: "Unsupported", message: `the header cannot hold the bitmap directory: ${e instanceof Error ? e.message : String(e)}` }))
    }
  })

/**
 * Frees a bitmap's data clusters and table (QEMU's free_bitmap_clusters).
 * A table that cannot be read or holds an invalid entry is left alone: its
 * clusters leak, which `check -r leaks` repairs.
 */
export function freeBitmapClusters(disk: BitmapDisk, tableOffset: number, tableSize: number): Effect.Effect<void, EngineFailure> {
  const cs = disk.clusterSize
  return Effect.gen(function* () {
    if (tableOffset === 0 || tableSize === 0 || tableSize > BitmapLimits.maxTableEntries) return
    const table = new Uint8Array(tableSize * 8)
    const read = yield* Effect.result(disk.storage.read(tableOffset, table))
    if (read._tag === "Failure") return
    const entries = readTable(table, tableSize, cs)
    if (entries === undefined) return
    for (const e of entries) if (e.offset !== 0) yield* disk.refcounts.free(e.offset, cs)
    yield* disk.refcounts.free(tableOffset, tableSize * 8)
  })
}
