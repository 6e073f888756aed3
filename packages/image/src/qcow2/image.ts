import { Effect } from "effect"
import { AutoclearFeature, decodeBitmapDirectory } from "@qcow2/format"
import type { BitmapDirectoryEntry } from "@qcow2/format"
import { asImageError, ImageError } from "@qcow2/cluster"
import type { Qcow2Engine } from "@qcow2/cluster"
import { decodeLuksHeader, LUKS_HEADER_SIZE } from "@qcow2/crypto"
import type { LuksHeader } from "@qcow2/crypto"
import type { CheckResult, FormatSpecific, Image } from "../api.js"

/** Largest bitmap directory read for `formatSpecific` (QEMU's limit on the directory, 64 MiB). */
const MAX_BITMAP_DIRECTORY = 64 * 1024 * 1024

/** The engine behind each qcow2 Image, for createImage (encryption set-up). */
export const qcow2Engines = new WeakMap<Image, Qcow2Engine>()

/** What the qcow2 Image adds to its engine: the chain around it and qemu-img check. */
export interface Qcow2ImageParts {
  readonly engine: Qcow2Engine
  readonly backing: Image | undefined
  readonly backingFileName: string | undefined
  readonly backingResolved: string | undefined
  readonly dataFile: string | undefined
  /** qemu-img check (and repair) of the image file, which must be flushed and left alone meanwhile. */
  readonly check: (repair: "leaks" | "all" | undefined) => Effect.Effect<CheckResult, ImageError>
}

/**
 * The public Image of an open qcow2 file: the engine's requests, plus the
 * backing chain, check/repair and the format-specific details `info`
 * shows. The engine is closed (flushed, dirty bit cleared) with the scope.
 */
export function makeQcow2Image(parts: Qcow2ImageParts): Effect.Effect<Image, never, import("effect").Scope.Scope> {
  const { engine } = parts
  const location = engine.location
  const image: Image = {
    format: "qcow2",
    location,
    readOnly: engine.integrity.readOnly,
    get virtualSize() {
      return engine.virtualSize
    },
    clusterSize: engine.geometry.clusterSize,
    get header() {
      return engine.header.image
    },
    get snapshots() {
      return engine.snapshots.entries
    },
    backing: parts.backing,
    backingFileName: parts.backingFileName,
    backingFileResolved: parts.backingResolved,
    dataFile: parts.dataFile,
    read: (offset, into) => engine.read(offset, into),
    write: (offset, data, options) => engine.write(offset, data, options?.placed),
    writeZeroes: (offset, length, options) => engine.writeZeroes(offset, length, options?.unmap ?? false),
    discard: (offset, length) => engine.discard(offset, length),
    writeCompressed: (offset, data) => engine.writeCompressed(offset, data),
    flush: () => engine.flush(),
    close: () => engine.close(),
    outOfService: () => engine.integrity.ejected,
    vmState: { read: (pos, into) => engine.readVmState(pos, into), write: (pos, data) => engine.writeVmState(pos, data) },
    truncate: (size, options) => engine.truncate(size, options),
    blockStatus: (offset, length) => engine.blockStatus(offset, length),
    formatSpecific: () => formatSpecific(engine),
    makeEmpty: () => engine.makeEmpty(),
    setBacking: (name, format) => engine.setBacking(name, format),
    bitmaps: engine.bitmaps,
    check: (options) => {
      const repair = options?.repair
      if (repair === undefined) return Effect.andThen(engine.flush(), parts.check(undefined))
      if (engine.integrity.readOnly) {
        return Effect.fail(new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only; repairs need a read-write open`, location }))
      }
      return engine.repair(parts.check(repair), (result) => result.corruptions === 0 && result.checkErrors === 0)
    },
    internalSnapshots: {
      create: (name, time, icount) => engine.createSnapshot(name, time, icount),
      apply: (idOrName) => engine.applySnapshot(idOrName),
      delete: (id, name) => engine.deleteSnapshot(id, name),
      load: (id, name) => engine.loadSnapshot(id, name)
    }
  }
  qcow2Engines.set(image, engine)
  return Effect.as(Effect.addFinalizer(() => Effect.asVoid(engine.close())), image)
}

/** The LUKS header and persistent bitmaps, read through the engine's own storage. */
function formatSpecific(engine: Qcow2Engine): Effect.Effect<FormatSpecific, ImageError> {
  const location = engine.location
  const image = engine.header.image
  return Effect.gen(function* () {
    let luks: LuksHeader | undefined
    const fde = image.extensions.fullDiskEncryption
    if (fde !== undefined) {
      const bytes = new Uint8Array(LUKS_HEADER_SIZE)
      yield* asImageError(engine.storage.read(fde.offset, bytes), location)
      luks = yield* Effect.try({
        try: () => decodeLuksHeader(bytes),
        catch: (e) => new ImageError({ reason: "Corrupt", message: `The LUKS header does not decode: ${e instanceof Error ? e.message : String(e)}`, location })
      })
    }
    let bitmaps: ReadonlyArray<BitmapDirectoryEntry> | undefined
    const ext = image.extensions.bitmaps
    // Bitmaps are shown only while the autoclear bit says they are consistent.
    if (ext !== undefined && ext.nbBitmaps > 0 && (image.header.autoclearFeatures & AutoclearFeature.Bitmaps) !== 0n) {
      if (ext.directorySize > MAX_BITMAP_DIRECTORY) {
        return yield* new ImageError({ reason: "Corrupt", message: `Bitmap directory too large (${ext.directorySize} bytes)`, location })
      }
      const bytes = new Uint8Array(ext.directorySize)
      yield* asImageError(engine.storage.read(ext.directoryOffset, bytes), location)
      bitmaps = yield* Effect.try({
        try: () => decodeBitmapDirectory(bytes, ext.nbBitmaps),
        catch: (e) => new ImageError({ reason: "Corrupt", message: `The bitmap directory does not decode: ${e instanceof Error ? e.message : String(e)}`, location })
      })
    }
    return { ...(luks !== undefined ? { luks } : {}), ...(bitmaps !== undefined ? { bitmaps } : {}) }
  })
}
