import { Effect } from "effect"
import type { Scope } from "effect"
import {
  AutoclearFeature,
  BITMAP_TYPE_DIRTY_TRACKING,
  BitmapFlag,
  decodeBitmapDirectory,
  decodeHeader,
  decodeImageHeader,
  decodeSnapshotTable,
  MAX_SNAPSHOT_ENTRY_SIZE,
  SNAPSHOT_ENTRY_FIXED_SIZE,
  snapshotTableRefusal,
  IncompatibleFeature,
  KNOWN_AUTOCLEAR_FEATURES,
  KNOWN_INCOMPATIBLE_FEATURES,
  l1EntriesFor,
  Limits,
  makeGeometry
} from "@qcow2/format"
import type { BitmapDirectoryEntry, FeatureName, ImageHeader, SnapshotEntry } from "@qcow2/format"
import { HeaderState, loadBitmaps, Qcow2Engine } from "@qcow2/cluster"
import type { BackingLayer, ClusterCompression, SectorCrypto } from "@qcow2/cluster"
import type { ClusterCodecShape } from "@qcow2/compress"
import type { BlockStorageShape } from "@qcow2/storage"
import type { CheckResult, Image, ImageFormat, OpenOptions } from "../api.js"
import { ImageError } from "../errors.js"
import { asImageError, fromDecodeFailure } from "../internal/errors.js"
import { qemuHeaderRefusal } from "./header-check.js"
import { makeQcow2Image } from "./image.js"

/** What opening a qcow2 image needs from the chain opener above it. */
export interface Qcow2OpenEnvironment {
  readonly storage: BlockStorageShape
  readonly readOnly: boolean
  readonly options: OpenOptions
  readonly codec: ClusterCodecShape
  /** Opens the backing file named in the header (resolved by the caller). */
  readonly openBacking: (name: string, format: ImageFormat | undefined) => Effect.Effect<Image, ImageError, Scope.Scope>
  /** Opens the external data file named in the header. */
  readonly openDataFile: (name: string) => Effect.Effect<BlockStorageShape, ImageError, Scope.Scope>
  /** Resolved name for a backing file name, for reporting. */
  readonly resolveBacking: (name: string) => string
  /** Unlocks encryption, when the image is encrypted and a passphrase was given. */
  readonly unlock?: (image: ImageHeader, storage: BlockStorageShape) => Effect.Effect<SectorCrypto | undefined, ImageError>
  /** Checks (and repairs) the file on its own (qemu-img check). */
  readonly check: (repair: "leaks" | "all" | undefined) => Effect.Effect<CheckResult, ImageError>
  /** Set after the dirty-bit repair, so it runs once. */
  readonly repaired?: boolean
  /** The format to open the backing file with in place of the one the image names (backing.driver). */
  readonly backingFormat?: ImageFormat
}

const corrupt = (location: string, message: string, offset?: number): ImageError =>
  new ImageError({ reason: "Corrupt", message, location, ...(offset !== undefined ? { offset } : {}) })

/**
 * The unsupported incompatible bits as QEMU's report_unsupported_feature
 * lists them: the names the image's feature name table gives, in table
 * order (up to the first entry without a name), then the rest as one mask.
 */
function unsupportedFeatures(bits: bigint, names: ReadonlyArray<FeatureName>): string {
  const out: string[] = []
  let rest = bits
  for (const entry of names) {
    if (entry.name === "") break
    const bit = 1n << BigInt(entry.bit)
    if (entry.type !== 0 || (rest & bit) === 0n) continue
    out.push(entry.name)
    rest &= ~bit
  }
  if (rest !== 0n) out.push(`Unknown incompatible feature: ${rest.toString(16)}`)
  return out.join(", ")
}

const tableFits = (offset: number, length: number, fileSize: number): boolean => offset + length <= fileSize

/**
 * Opens a qcow2 image: reads and validates the header against the file
 * (every size bounded before it is used), loads the L1 and refcount
 * tables, opens the backing file and the external data file, and builds
 * the driver state. Refuses unknown incompatible features, and read-write
 * opens of corrupt images.
 */
export function openQcow2(env: Qcow2OpenEnvironment): Effect.Effect<Image, ImageError, Scope.Scope> {
  const { storage } = env
  const location = storage.location
  return Effect.gen(function* () {
    const fileSize = yield* asImageError(storage.size(), location)
    if (fileSize < 72) return yield* new ImageError({ reason: "NotQcow2", message: "Image is not in qcow2 format (file too small)", location })
    const first = new Uint8Array(Math.min(fileSize, 4096))
    yield* asImageError(storage.read(0, first), location)
    const refusal = qemuHeaderRefusal(first, env.options.forCheck === true)
    if (refusal !== undefined) return yield* new ImageError({ ...refusal, location })
    const fixed = yield* Effect.try({ try: () => decodeHeader(first), catch: (e) => fromDecodeFailure(location, e) })
    const clusterSize = 2 ** fixed.clusterBits
    const cluster0 = new Uint8Array(clusterSize)
    yield* asImageError(storage.read(0, cluster0), location)
    const parsed = yield* Effect.try({ try: () => decodeImageHeader(cluster0), catch: (e) => fromDecodeFailure(location, e) })
    const h = parsed.header

    const unknownIncompatible = h.incompatibleFeatures & ~KNOWN_INCOMPATIBLE_FEATURES
    if (unknownIncompatible !== 0n) {
      return yield* new ImageError({
        reason: "Unsupported",
        message: `Unsupported qcow2 feature(s): ${unsupportedFeatures(unknownIncompatible, parsed.extensions.featureNames)}`,
        location
      })
    }
    if (env.options.lazyRefcounts === true && h.version < 3) {
      return yield* new ImageError({ reason: "InvalidArgument", message: "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level", location })
    }
    const isCorrupt = (h.incompatibleFeatures & IncompatibleFeature.Corrupt) !== 0n
    if (isCorrupt && !env.readOnly && env.options.forCheck !== true) {
      return yield* new ImageError({
        reason: "Corrupt",
        message: "qcow2: Image is corrupt; cannot be opened read/write",
        location
      })
    }
    if ((h.incompatibleFeatures & IncompatibleFeature.Dirty) !== 0n && !env.readOnly && env.repaired !== true && env.options.forCheck !== true) {
      // Lazy refcounts left stale refcounts behind: rebuild them before use
      // (QEMU repairs a dirty image on a read-write open).
      const result = yield* env.check("all")
      // QEMU's repair on open prints what it finds and fixes, as qemu-img check does.
      for (const line of result.messages) env.options.report?.(line)
      // The repair may have moved the refcount table: start from the header on disk.
      const repaired = new Uint8Array(clusterSize)
      yield* asImageError(storage.read(0, repaired), location)
      const current = yield* Effect.try({ try: () => decodeImageHeader(repaired), catch: (e) => fromDecodeFailure(location, e) })
      yield* asImageError(new HeaderState(storage, current).setIncompatible(IncompatibleFeature.Dirty, false), location)
      return yield* openQcow2({ ...env, repaired: true })
    }
    const extendedL2 = (h.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n
    const geometry = yield* Effect.try({
      try: () => makeGeometry(h.clusterBits, extendedL2, h.refcountOrder),
      catch: (e) => fromDecodeFailure(location, e)
    })

    // L1 table: bounded, aligned, inside the file, large enough.
    if (h.l1Size * 8 > Limits.maxL1Bytes) {
      return yield* corrupt(location, `Active L1 table too large (${h.l1Size} entries)`, 36)
    }
    if (h.l1Size < l1EntriesFor(h.size, geometry)) {
      return yield* corrupt(location, `L1 table is too small for the virtual size (${h.l1Size} entries for ${h.size} bytes)`, 36)
    }
    if (h.l1Size > 0 && (h.l1TableOffset % clusterSize !== 0 || h.l1TableOffset === 0)) {
      return yield* corrupt(location, `Active L1 table offset invalid (${h.l1TableOffset})`, 40)
    }
    if (h.l1Size > 0 && !tableFits(h.l1TableOffset, h.l1Size * 8, fileSize)) {
      return yield* corrupt(location, `Active L1 table (offset ${h.l1TableOffset}, ${h.l1Size} entries) lies past the end of the file (${fileSize} bytes)`, 40)
    }
    // Refcount table.
    const reftableBytes = h.refcountTableClusters * clusterSize
    if (reftableBytes > Limits.maxRefcountTableBytes || h.refcountTableClusters === 0) {
      return yield* corrupt(location, `Reference count table has an invalid size (${h.refcountTableClusters} clusters)`, 56)
    }
    if (h.refcountTableOffset % clusterSize !== 0 || h.refcountTableOffset === 0) {
      return yield* corrupt(location, `Reference count table offset invalid (${h.refcountTableOffset})`, 48)
    }
    if (!tableFits(h.refcountTableOffset, reftableBytes, fileSize)) {
      return yield* corrupt(location, `Reference count table (offset ${h.refcountTableOffset}) lies past the end of the file (${fileSize} bytes)`, 48)
    }
    // Snapshot table.
    if (h.nbSnapshots > Limits.maxSnapshots) {
      return yield* corrupt(location, "Snapshot table too large", 60)
    }
    let snapshots: SnapshotEntry[] = []
    if (h.nbSnapshots > 0) {
      if (h.snapshotsOffset % clusterSize !== 0 || h.snapshotsOffset === 0) {
        return yield* corrupt(location, "Snapshot table offset invalid", 64)
      }
      // QEMU reads a table that runs past the end of the file as zeros: room
      // for the file's part, a zero entry for each snapshot beyond it, and
      // one whole entry crossing either limit.
      const inFile = Math.max(0, fileSize - h.snapshotsOffset)
      const tableBytes = new Uint8Array(
        Math.min(Limits.maxSnapshotTableBytes, inFile + h.nbSnapshots * SNAPSHOT_ENTRY_FIXED_SIZE) + MAX_SNAPSHOT_ENTRY_SIZE
      )
      const readable = Math.min(inFile, tableBytes.length)
      if (readable > 0) yield* asImageError(storage.read(h.snapshotsOffset, tableBytes.subarray(0, readable)), location)
      const refusal = snapshotTableRefusal(tableBytes, h.nbSnapshots)
      if (refusal !== undefined) return yield* corrupt(location, refusal, h.snapshotsOffset)
      snapshots = yield* Effect.try({
        try: () => decodeSnapshotTable(tableBytes, h.nbSnapshots).snapshots,
        catch: (e) => fromDecodeFailure(location, e)
      })
    }

    // Persistent bitmaps: QEMU loads and checks the directory on every open
    // while the autoclear bit says the bitmaps are consistent.
    const broken = yield* brokenBitmapDirectory(storage, parsed, clusterSize)
    if (broken) return yield* corrupt(location, "Broken bitmap directory")

    // External data file.
    const externalData = (h.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n
    let dataStorage: BlockStorageShape | undefined
    if (externalData) {
      const name = parsed.extensions.externalDataFile
      // QEMU's qcow2_do_open: a data file must be named (on the command line, which this toolkit
      // does not take, or in the image); an open that does no I/O (info) goes without.
      if (name === undefined || name === "") {
        if (env.options.noIo !== true) return yield* new ImageError({ reason: "InvalidArgument", message: "'data-file' is required for this image", location, errno: "EINVAL" })
      } else {
        dataStorage = yield* env.openDataFile(name)
      }
    }

    // Backing file. A name is a C string to QEMU: it ends at the first NUL byte.
    const backingFileName = parsed.backingFile === undefined ? undefined : parsed.backingFile.split("\0")[0]
    let backing: Image | undefined
    let backingResolved: string | undefined
    if (backingFileName !== undefined && backingFileName !== "" && env.options.openBacking !== false) {
      const fmt = env.backingFormat ?? parsed.extensions.backingFormat
      const format: ImageFormat | undefined = fmt === "qcow2" || fmt === "raw" || fmt === "luks" ? fmt : undefined
      if (fmt !== undefined && format === undefined) {
        return yield* new ImageError({ reason: "BackingChain", message: `Could not open backing file: Unknown driver '${fmt}'`, location })
      }
      backingResolved = env.resolveBacking(backingFileName)
      backing = yield* env.openBacking(backingFileName, format)
    } else if (backingFileName !== undefined) {
      backingResolved = env.resolveBacking(backingFileName)
    }

    // Encryption.
    let crypto: SectorCrypto | undefined
    if (h.cryptMethod !== 0 && env.unlock !== undefined) crypto = yield* env.unlock(parsed, storage)

    let header = parsed
    if (!env.readOnly) {
      // Unknown autoclear bits are cleared by a writer that does not know them.
      const autoclear = h.autoclearFeatures & KNOWN_AUTOCLEAR_FEATURES
      if (autoclear !== h.autoclearFeatures) {
        const state = new HeaderState(storage, parsed)
        yield* asImageError(state.update({ autoclearFeatures: autoclear }), location)
        header = state.image
      }
    }

    // Persistent bitmaps are loaded on every open; a read-write open marks them in use first.
    const bitmaps = yield* loadBitmaps(storage, header, env.readOnly, Math.floor(h.size / 512) * 512)
    header = bitmaps.image

    const l1Table = new Uint8Array(Math.max(h.l1Size * 8, 8))
    if (h.l1Size > 0) yield* asImageError(storage.read(h.l1TableOffset, l1Table.subarray(0, h.l1Size * 8)), location)
    const refcountTable = new Uint8Array(reftableBytes)
    yield* asImageError(storage.read(h.refcountTableOffset, refcountTable), location)

    const engine = new Qcow2Engine({
      storage,
      dataFile: dataStorage,
      header,
      readOnly: env.readOnly,
      l1Table,
      refcountTable,
      fileSize,
      snapshots,
      backing: backing === undefined ? undefined : backingLayer(backing),
      compression: compressionOf(env, h.compressionType === 1 ? 1 : 0),
      crypto,
      bitmaps,
      ...(env.options.report !== undefined ? { report: env.options.report } : {}),
      ...(env.options.lazyRefcounts !== undefined ? { lazyRefcounts: env.options.lazyRefcounts } : {}),
      ...(env.options.checksInactiveL2 === true ? { checksInactiveL2: true } : {}),
      l2CacheBytes:
        env.options.l2CacheBytes ??
        Math.min(32 * 1024 * 1024, Math.max(4 * clusterSize, Math.ceil(h.size / geometry.l2Entries / clusterSize) * clusterSize)),
      refcountCacheBytes: env.options.refcountCacheBytes ?? Math.max(4 * clusterSize, 1024 * 1024)
    })
    return yield* makeQcow2Image({
      engine,
      backing,
      backingFileName,
      backingResolved,
      dataFile: dataStorage?.location,
      check: env.check
    })
  })
}

/** Largest bitmap directory QEMU reads (QCOW2_MAX_BITMAP_DIRECTORY_SIZE). */
const MAX_BITMAP_DIRECTORY = 64 * 1024 * 1024

/**
 * Whether the bitmap directory is one QEMU refuses ("Broken bitmap
 * directory", qcow2-bitmap.c check_dir_entry): undecodable, or an entry
 * with reserved flags, an unknown type, a granularity outside 9..31, an
 * unaligned table, or extra data QEMU cannot ignore.
 */
function brokenBitmapDirectory(storage: BlockStorageShape, image: ImageHeader, clusterSize: number): Effect.Effect<boolean, ImageError> {
  const ext = image.extensions.bitmaps
  if (ext === undefined || (image.header.autoclearFeatures & AutoclearFeature.Bitmaps) === 0n) return Effect.succeed(false)
  if (ext.directorySize > MAX_BITMAP_DIRECTORY || ext.directoryOffset % clusterSize !== 0) return Effect.succeed(true)
  return Effect.gen(function* () {
    const bytes = new Uint8Array(ext.directorySize)
    yield* asImageError(storage.read(ext.directoryOffset, bytes), storage.location)
    let entries: ReadonlyArray<BitmapDirectoryEntry>
    try {
      entries = decodeBitmapDirectory(bytes, ext.nbBitmaps)
    } catch {
      return true
    }
    const knownFlags = BitmapFlag.InUse | BitmapFlag.Auto | BitmapFlag.ExtraDataCompatible
    return entries.some(
      (e) =>
        (e.flags & ~knownFlags) !== 0 ||
        e.type !== BITMAP_TYPE_DIRTY_TRACKING ||
        e.granularityBits < 9 ||
        e.granularityBits > 31 ||
        e.tableOffset % clusterSize !== 0 ||
        (e.extraData.length > 0 && (e.flags & BitmapFlag.ExtraDataCompatible) === 0)
    )
  })
}

/** The backing image as the engine reads it. */
const backingLayer = (image: Image): BackingLayer => ({
  get size() {
    return image.virtualSize
  },
  read: (offset, into) => image.read(offset, into),
  blockStatus: (offset, length) => image.blockStatus(offset, length)
})

/** The image's compression type bound to the codec (or the caller's compressor, e.g. a worker pool). */
function compressionOf(env: Qcow2OpenEnvironment, type: 0 | 1): ClusterCompression {
  const level = env.options.compressionLevel
  const compress = env.options.compress
  const compressClusters = env.options.compressClusters
  return {
    decompress: (input, out) => env.codec.decompress(type, input, out),
    compress: (input) =>
      compress !== undefined ? compress(type, input, level) : env.codec.compress(type, input, level === undefined ? undefined : { level }),
    ...(compressClusters !== undefined ? { compressClusters: (data, clusterSize, use) => compressClusters(type, data, clusterSize, level, use) } : {})
  }
}
