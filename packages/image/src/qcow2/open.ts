import { Effect, Semaphore } from "effect"
import type { Scope } from "effect"
import { Refcounts } from "@qcow2/alloc"
import { TableCache } from "@qcow2/cache"
import {
  AutoclearFeature,
  CompatibleFeature,
  decodeHeader,
  decodeImageHeader,
  decodeSnapshotTable,
  FormatError,
  IncompatibleFeature,
  KNOWN_AUTOCLEAR_FEATURES,
  KNOWN_INCOMPATIBLE_FEATURES,
  l1EntriesFor,
  Limits,
  makeGeometry
} from "@qcow2/format"
import type { FeatureName, Header, ImageHeader, SnapshotEntry } from "@qcow2/format"
import { InFlightAllocations } from "@qcow2/cluster"
import type { ClusterContext, SectorCrypto } from "@qcow2/cluster"
import type { ClusterCodecShape } from "@qcow2/compress"
import type { BlockStorageShape } from "@qcow2/storage"
import type { CheckResult, Image, ImageFormat, OpenOptions } from "../api.js"
import { ImageError } from "../errors.js"
import { asImageError, toImageError } from "../internal/errors.js"
import { HeaderState } from "./header.js"
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
}

const corrupt = (location: string, message: string, offset?: number): ImageError =>
  new ImageError({ reason: "Corrupt", message, location, ...(offset !== undefined ? { offset } : {}) })

/** Human names of incompatible bits, from the image's feature name table or the spec. */
function unsupportedFeatures(bits: bigint, names: ReadonlyArray<FeatureName>): string {
  const out: string[] = []
  for (let bit = 0; bit < 64; bit++) {
    if ((bits & (1n << BigInt(bit))) === 0n) continue
    const named = names.find((n) => n.type === 0 && n.bit === bit)
    out.push(named !== undefined ? named.name : `Unknown incompatible feature: ${(1n << BigInt(bit)).toString(16)}`)
  }
  return out.join(", ")
}

function fromFormatError(location: string, e: unknown): ImageError {
  if (e instanceof FormatError) {
    const reason = e.reason === "BadMagic" ? "NotQcow2" : e.reason === "UnsupportedVersion" ? "Unsupported" : "Corrupt"
    return new ImageError({ reason, message: e.message, location, ...(e.offset !== undefined ? { offset: e.offset } : {}), cause: e })
  }
  return toImageError(e, location)
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
    const fixed = yield* Effect.try({ try: () => decodeHeader(first), catch: (e) => fromFormatError(location, e) })
    const clusterSize = 2 ** fixed.clusterBits
    const cluster0 = new Uint8Array(clusterSize)
    yield* asImageError(storage.read(0, cluster0), location)
    const parsed = yield* Effect.try({ try: () => decodeImageHeader(cluster0), catch: (e) => fromFormatError(location, e) })
    const h = parsed.header

    const unknownIncompatible = h.incompatibleFeatures & ~KNOWN_INCOMPATIBLE_FEATURES
    if (unknownIncompatible !== 0n) {
      return yield* new ImageError({
        reason: "Unsupported",
        message: `Unsupported qcow2 feature(s): ${unsupportedFeatures(unknownIncompatible, parsed.extensions.featureNames)}`,
        location
      })
    }
    const isCorrupt = (h.incompatibleFeatures & IncompatibleFeature.Corrupt) !== 0n
    if (isCorrupt && !env.readOnly && env.options.forCheck !== true) {
      return yield* new ImageError({
        reason: "Corrupt",
        message: "qcow2: Image is corrupt; cannot be opened read/write (run 'qcow2 check -r all' to repair it)",
        location
      })
    }
    if ((h.incompatibleFeatures & IncompatibleFeature.Dirty) !== 0n && !env.readOnly && env.repaired !== true && env.options.forCheck !== true) {
      // Lazy refcounts left stale refcounts behind: rebuild them before use
      // (QEMU repairs a dirty image on a read-write open).
      yield* env.check("all")
      // The repair may have moved the refcount table: start from the header on disk.
      const repaired = new Uint8Array(clusterSize)
      yield* asImageError(storage.read(0, repaired), location)
      const current = yield* Effect.try({ try: () => decodeImageHeader(repaired), catch: (e) => fromFormatError(location, e) })
      yield* asImageError(new HeaderState(storage, current).setIncompatible(IncompatibleFeature.Dirty, false), location)
      return yield* openQcow2({ ...env, repaired: true })
    }
    const extendedL2 = (h.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n
    const geometry = yield* Effect.try({
      try: () => makeGeometry(h.clusterBits, extendedL2, h.refcountOrder),
      catch: (e) => fromFormatError(location, e)
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
      return yield* corrupt(location, `Too many snapshots (${h.nbSnapshots})`, 60)
    }
    let snapshots: SnapshotEntry[] = []
    if (h.nbSnapshots > 0) {
      if (h.snapshotsOffset % clusterSize !== 0 || h.snapshotsOffset === 0 || h.snapshotsOffset >= fileSize) {
        return yield* corrupt(location, `Snapshot table offset invalid (${h.snapshotsOffset})`, 64)
      }
      const tableBytes = new Uint8Array(Math.min(fileSize - h.snapshotsOffset, Limits.maxSnapshotTableBytes))
      yield* asImageError(storage.read(h.snapshotsOffset, tableBytes), location)
      snapshots = yield* Effect.try({
        try: () => decodeSnapshotTable(tableBytes, h.nbSnapshots).snapshots,
        catch: (e) => fromFormatError(location, e)
      })
    }

    // External data file.
    const externalData = (h.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n
    const rawExternalData = externalData && (h.autoclearFeatures & AutoclearFeature.RawExternalData) !== 0n
    let data = storage
    let dataFile: string | undefined
    if (externalData) {
      const name = parsed.extensions.externalDataFile
      if (name === undefined || name === "") {
        return yield* new ImageError({ reason: "Unsupported", message: "Missing data file: the image needs an external data file but names none", location })
      }
      data = yield* env.openDataFile(name)
      dataFile = data.location
    }

    // Backing file.
    let backing: Image | undefined
    let backingResolved: string | undefined
    if (parsed.backingFile !== undefined && parsed.backingFile !== "" && env.options.openBacking !== false) {
      const fmt = parsed.extensions.backingFormat
      const format: ImageFormat | undefined = fmt === "qcow2" || fmt === "raw" ? fmt : undefined
      if (fmt !== undefined && format === undefined) {
        return yield* new ImageError({ reason: "Unsupported", message: `Unsupported backing file format '${fmt}'`, location })
      }
      backingResolved = env.resolveBacking(parsed.backingFile)
      backing = yield* env.openBacking(parsed.backingFile, format)
    } else if (parsed.backingFile !== undefined) {
      backingResolved = env.resolveBacking(parsed.backingFile)
    }

    // Encryption.
    let crypto: SectorCrypto | undefined
    if (h.cryptMethod !== 0 && env.unlock !== undefined) crypto = yield* env.unlock(parsed, storage)

    const headerState = new HeaderState(storage, parsed)
    const readOnly = env.readOnly
    if (!readOnly) {
      // Unknown autoclear bits are cleared by a writer that does not know them.
      const autoclear = h.autoclearFeatures & KNOWN_AUTOCLEAR_FEATURES
      if (autoclear !== h.autoclearFeatures) yield* asImageError(headerState.update({ autoclearFeatures: autoclear }), location)
    }

    const l1Bytes = new Uint8Array(Math.max(h.l1Size * 8, 8))
    if (h.l1Size > 0) yield* asImageError(storage.read(h.l1TableOffset, l1Bytes.subarray(0, h.l1Size * 8)), location)
    const reftable = new Uint8Array(reftableBytes)
    yield* asImageError(storage.read(h.refcountTableOffset, reftable), location)

    const l2CacheBytes =
      env.options.l2CacheBytes ??
      Math.min(32 * 1024 * 1024, Math.max(4 * clusterSize, Math.ceil(h.size / geometry.l2Entries / clusterSize) * clusterSize))
    const refcountCacheBytes = env.options.refcountCacheBytes ?? Math.max(4 * clusterSize, 1024 * 1024)

    const l2Cache = new TableCache({ name: "L2", tableSize: clusterSize, capacityBytes: l2CacheBytes, storage })
    const refcounts = makeRefcounts(storage, headerState, h, reftable, fileSize, refcountCacheBytes)

    const lock = yield* Semaphore.make(1)
    const lazyRefcounts = (h.compatibleFeatures & CompatibleFeature.LazyRefcounts) !== 0n
    const backingImage = backing
    const context: ClusterContext = {
      location,
      storage,
      data,
      externalData,
      rawExternalData,
      geometry,
      version: h.version,
      virtualSize: h.size,
      l1: l1Bytes,
      l1Offset: h.l1TableOffset,
      l1Size: h.l1Size,
      l2Cache,
      refcounts,
      backing: backingImage === undefined ? undefined : {
        get size() {
          return backingImage.virtualSize
        },
        read: (offset, into) => backingImage.read(offset, into)
      },
      decompress: (input, out) => env.codec.decompress(h.compressionType as 0 | 1, input, out),
      compress: (input) => {
        const type = h.compressionType as 0 | 1
        const level = env.options.compressionLevel
        if (env.options.compress !== undefined) return env.options.compress(type, input, level)
        return env.codec.compress(type, input, level === undefined ? undefined : { level })
      },
      crypto,
      lock,
      inflight: new InFlightAllocations(),
      lazyRefcounts,
      commitL1: (offset, size) => headerState.update({ l1TableOffset: offset, l1Size: size }),
      corrupt: () => Effect.die("replaced by the image"),
      writable: () => !readOnly,
      overlapsMetadata: () => undefined
    }
    return yield* makeQcow2Image({
      context,
      headerState,
      readOnly,
      snapshots,
      backing,
      backingFileName: parsed.backingFile,
      backingResolved,
      dataFile,
      isCorrupt,
      codec: env.codec,
      encryptedLocked: h.cryptMethod !== 0 && crypto === undefined,
      check: env.check,
      reload: () => reloadMetadata(storage, headerState, refcountCacheBytes)
    })
  })
}

/**
 * Re-reads the refcount table location and the active L1 table after a
 * repair rewrote them, and builds fresh refcount state. The caches must be
 * flushed and empty.
 */
function reloadMetadata(storage: BlockStorageShape, headerState: HeaderState, refcountCacheBytes: number) {
  const location = storage.location
  return asImageError(
    Effect.gen(function* () {
      const first = new Uint8Array(4096)
      yield* storage.read(0, first)
      const h = decodeHeader(first)
      const clusterSize = 2 ** h.clusterBits
      const fileSize = yield* storage.size()
      headerState.image = { ...headerState.image, header: { ...headerState.image.header, ...h, unknownHeaderFields: headerState.image.header.unknownHeaderFields } }
      const reftable = new Uint8Array(h.refcountTableClusters * clusterSize)
      yield* storage.read(h.refcountTableOffset, reftable)
      const l1 = new Uint8Array(Math.max(h.l1Size * 8, 8))
      if (h.l1Size > 0) yield* storage.read(h.l1TableOffset, l1.subarray(0, h.l1Size * 8))
      const refcounts = makeRefcounts(storage, headerState, h, reftable, fileSize, refcountCacheBytes)
      return { refcounts, l1, l1Offset: h.l1TableOffset, l1Size: h.l1Size }
    }),
    location
  )
}

/** Refcount state over the table read from the image; table moves are written to the header. */
function makeRefcounts(
  storage: BlockStorageShape,
  headerState: HeaderState,
  h: Header,
  reftable: Uint8Array,
  fileSize: number,
  cacheBytes: number
): Refcounts {
  const clusterSize = 2 ** h.clusterBits
  return new Refcounts({
    storage,
    clusterBits: h.clusterBits,
    refcountOrder: h.refcountOrder,
    table: { offset: h.refcountTableOffset, clusters: h.refcountTableClusters },
    tableBytes: reftable,
    blockCache: new TableCache({ name: "refcount block", tableSize: clusterSize, capacityBytes: cacheBytes, storage }),
    fileSize,
    commitTableLocation: (loc) => headerState.update({ refcountTableOffset: loc.offset, refcountTableClusters: loc.clusters })
  })
}
