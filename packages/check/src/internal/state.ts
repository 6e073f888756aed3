import { Effect } from "effect"
import {
  AutoclearFeature,
  CryptMethod,
  FormatError,
  IncompatibleFeature,
  KNOWN_INCOMPATIBLE_FEATURES,
  Limits,
  decodeImageHeader,
  makeGeometry,
  maxRefcount,
  readU32Lenient
} from "@qcow2/format"
import type { Geometry, Header } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { type Io, OpenRefused } from "./io.js"
import { type BitmapEntry, bitmapTableValid, expectedBitmapTableSize, parseBitmapDirectory } from "./bitmap-directory.js"

/** Counters of one check, as QEMU's BdrvCheckResult holds them. */
export interface Tally {
  checkErrors: number
  corruptions: number
  leaks: number
  corruptionsFixed: number
  leaksFixed: number
  imageEndOffset: number
  totalClusters: number
  allocatedClusters: number
  fragmentedClusters: number
  compressedClusters: number
}

export const emptyTally = (): Tally => ({
  checkErrors: 0,
  corruptions: 0,
  leaks: 0,
  corruptionsFixed: 0,
  leaksFixed: 0,
  imageEndOffset: 0,
  totalClusters: 0,
  allocatedClusters: 0,
  fragmentedClusters: 0,
  compressedClusters: 0
})

/** A snapshot as the check needs it (qcow2.txt "Snapshots"). */
export interface SnapshotInfo {
  readonly id: string
  readonly name: string
  /** Host offset of the snapshot's L1 table (inexact above 2^53, where it is past any file anyway). */
  readonly l1Offset: number
  readonly l1OffsetHex: string
  readonly l1OffsetAligned: boolean
  readonly l1Size: number
  /** extra_data_size, lowered to QEMU's maximum when a repair drops the excess. */
  readonly extraDataSize: number
  /** The fixed 40-byte entry header as stored. */
  readonly rawHeader: Uint8Array
  /** The known extra data fields as stored (at most 24 bytes). */
  readonly knownExtra: Uint8Array
  /** Extra data past the known fields (kept when the table is rewritten). */
  readonly unknownExtra: Uint8Array
  readonly idBytes: Uint8Array
  readonly nameBytes: Uint8Array
}

export interface BitmapsInfo {
  readonly nbBitmaps: number
  readonly directoryOffset: number
  readonly directorySize: number
  /** The directory, validated at open as QEMU's qcow2_load_dirty_bitmaps does. */
  readonly bitmaps: ReadonlyArray<BitmapEntry>
}

/**
 * What QEMU's open in check mode (BDRV_O_CHECK) knows about an image:
 * the header, the active L1 table and the refcount table. Tables are read
 * only as far as the file goes; entries past its end read as zero, so a
 * header announcing huge tables costs no memory.
 */
export interface ImageInfo {
  readonly header: Header
  /** Sizes derived from cluster_bits, the extended L2 bit and refcount_order (for the format codecs). */
  readonly geometry: Geometry
  readonly clusterBits: number
  readonly clusterSize: number
  readonly extendedL2: boolean
  readonly l2Entries: number
  readonly l2EntryBytes: 8 | 16
  readonly refcountOrder: number
  readonly refcountMax: number
  /** log2 of the entries per refcount block. */
  readonly refblockBits: number
  /** Guest size in whole sectors, in bytes (QEMU's total_sectors * 512). */
  readonly virtualSize: number
  readonly totalClusters: number
  readonly hasDataFile: boolean
  readonly crypto: { readonly offset: number; readonly length: number } | undefined
  readonly bitmaps: BitmapsInfo | undefined
  readonly l1Size: number
  readonly l1TableOffset: number
  /** The active L1 table, as far as it lies inside the file. */
  readonly activeL1: Uint8Array
  fileSize: number
  reftableOffset: number
  /** Entries of the refcount table (refcount_table_clusters * cluster_size / 8). */
  reftableEntries: number
  /** The refcount table as far as it lies inside the file. */
  reftable: Uint8Array
  snapshots: ReadonlyArray<SnapshotInfo>
  snapshotsOffset: number
  snapshotsSize: number
}

/**
 * Reads a table of 8-byte entries: `length` bytes at `offset`, but only the
 * entries that start inside the file (the rest read as zero), so a table
 * the header claims is huge costs no more memory than the file holds.
 */
export const readBounded = (io: Io, fileSize: number, offset: number, length: number): Effect.Effect<Uint8Array, StorageError> => {
  const n = offset >= fileSize ? 0 : Math.min(length, Math.ceil((fileSize - offset) / 8) * 8)
  return io.read(offset, n)
}

const openError = (e: unknown): OpenRefused => {
  if (e instanceof FormatError) {
    const reason = e.reason === "BadMagic" ? "NotQcow2" : e.reason === "UnsupportedVersion" ? "Unsupported" : "Corrupt"
    return new OpenRefused({ reason, message: e.message, ...(e.offset !== undefined ? { offset: e.offset } : {}), cause: e })
  }
  return new OpenRefused({ reason: "Corrupt", message: String(e), cause: e })
}

/** QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
const MAX_BITMAP_DIRECTORY_SIZE = 1024 * Limits.maxBitmaps

/**
 * Opens the image the way `qemu-img check` does (QEMU's qcow2_do_open with
 * BDRV_O_CHECK): the header must be valid, but the snapshot table is left to
 * the check itself. Fails with OpenRefused when QEMU would refuse to open.
 * `warnings` receives QEMU's open-time warnings.
 */
export const loadImage = (io: Io, warnings: Array<string>): Effect.Effect<ImageInfo, OpenRefused | StorageError> =>
  Effect.gen(function* () {
    const fileSize = yield* io.size()
    const probe = yield* io.read(0, 512)
    const bits = readU32Lenient(probe, 20)
    const headerBytes = bits >= Limits.minClusterBits && bits <= Limits.maxClusterBits ? yield* io.read(0, 2 ** bits) : probe
    // The snapshot table pointer is judged by the check (qcow2_check_read_snapshot_table), not at open.
    const forDecode = headerBytes.slice()
    forDecode.fill(0, 60, 72)
    let decoded: ReturnType<typeof decodeImageHeader>
    try {
      decoded = decodeImageHeader(forDecode)
    } catch (e) {
      return yield* Effect.fail(openError(e))
    }
    const { header, extensions } = decoded
    const unknown = header.incompatibleFeatures & ~KNOWN_INCOMPATIBLE_FEATURES
    if (unknown !== 0n) {
      return yield* Effect.fail(
        new OpenRefused({ reason: "Unsupported", message: `Unsupported IMAGE feature(s): 0x${unknown.toString(16)}` })
      )
    }
    const extendedL2 = (header.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n
    const geometry = makeGeometry(header.clusterBits, extendedL2, header.refcountOrder)
    const clusterSize = geometry.clusterSize

    const totalSectors = Math.floor(header.size / 512)
    const virtualSize = totalSectors * 512

    let crypto: ImageInfo["crypto"]
    const fde = extensions.fullDiskEncryption
    if (header.cryptMethod === CryptMethod.Luks && fde !== undefined) {
      if (fde.offset % clusterSize !== 0) {
        return yield* Effect.fail(
          new OpenRefused({
            reason: "Corrupt",
            message: `Encryption header offset '${fde.offset}' is not a multiple of cluster size '${clusterSize}'`
          })
        )
      }
      crypto = { offset: fde.offset, length: fde.length }
    }

    let bitmaps: BitmapsInfo | undefined
    if (extensions.bitmaps !== undefined) {
      if ((header.autoclearFeatures & AutoclearFeature.Bitmaps) === 0n) {
        warnings.push(
          header.version < 3
            ? "warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
            : "warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
        )
        warnings.push("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
      } else {
        const b = extensions.bitmaps
        if (b.directoryOffset % clusterSize !== 0) {
          return yield* Effect.fail(new OpenRefused({ reason: "Corrupt", message: "bitmaps_ext: invalid dir offset" }))
        }
        if (b.directorySize > MAX_BITMAP_DIRECTORY_SIZE) {
          return yield* Effect.fail(new OpenRefused({ reason: "Corrupt", message: "bitmaps_ext: bitmap directory too large" }))
        }
        const dir = yield* readBounded(io, fileSize, b.directoryOffset, b.directorySize)
        const parsed = parseBitmapDirectory(dir, b.directorySize, b.nbBitmaps, clusterSize, virtualSize)
        if ("error" in parsed) return yield* Effect.fail(new OpenRefused({ reason: "Corrupt", message: parsed.error }))
        const seen = new Set<string>()
        for (const bm of parsed.bitmaps) {
          if (seen.has(bm.name)) {
            return yield* Effect.fail(new OpenRefused({ reason: "Corrupt", message: `Bitmap already exists: ${bm.name}` }))
          }
          seen.add(bm.name)
          // The data of a bitmap in use are not loaded (QEMU's load_bitmap): its table is judged by the check itself.
          if (bm.inUse) continue
          const table = yield* readBounded(io, fileSize, bm.tableOffset, bm.tableSize * 8)
          if (!bitmapTableValid(table, Math.floor(table.length / 8), clusterSize)) {
            return yield* Effect.fail(
              new OpenRefused({
                reason: "Corrupt",
                message: `Could not read bitmap_table table from image for bitmap '${bm.name}': Invalid argument`
              })
            )
          }
          if (bm.tableSize !== expectedBitmapTableSize(virtualSize, bm.granularityBits, clusterSize)) {
            return yield* Effect.fail(
              new OpenRefused({ reason: "Corrupt", message: `Could not read bitmap '${bm.name}' from image: Invalid argument` })
            )
          }
        }
        bitmaps = { nbBitmaps: b.nbBitmaps, directoryOffset: b.directoryOffset, directorySize: b.directorySize, bitmaps: parsed.bitmaps }
      }
    }

    const activeL1 = yield* readBounded(io, fileSize, header.l1TableOffset, header.l1Size * 8)
    const reftableEntries = header.refcountTableClusters * (clusterSize / 8)
    const reftable = yield* readBounded(io, fileSize, header.refcountTableOffset, reftableEntries * 8)
    return {
      header,
      geometry,
      clusterBits: header.clusterBits,
      clusterSize,
      extendedL2,
      l2Entries: geometry.l2Entries,
      l2EntryBytes: geometry.l2EntrySize,
      refcountOrder: header.refcountOrder,
      refcountMax: maxRefcount(header.refcountOrder),
      refblockBits: header.clusterBits + 3 - header.refcountOrder,
      virtualSize,
      totalClusters: Math.ceil(virtualSize / clusterSize),
      hasDataFile: (header.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n,
      crypto,
      bitmaps,
      l1Size: header.l1Size,
      l1TableOffset: header.l1TableOffset,
      activeL1,
      fileSize,
      reftableOffset: header.refcountTableOffset,
      reftableEntries,
      reftable,
      snapshots: [],
      snapshotsOffset: 0,
      snapshotsSize: 0
    } satisfies ImageInfo
  })
