/**
 * `qemu-img amend` for qcow2 images (QEMU's qcow2_amend_options), in
 * QEMU's order: upgrade, refcount width, data file fields, backing check,
 * lazy refcounts, size, downgrade. Each step that changes what the engine
 * was built from (version, refcount width) ends the open session; the next
 * step opens the image again, so the engine never runs on a header it
 * does not describe.
 */
import { Effect, Option } from "effect"
import { SectorCipherFactory } from "@qcow2/crypto"
import type { LuksKeySlotAmendment, LuksSecretLookup, SectorCipherFactoryShape } from "@qcow2/crypto"
import { AutoclearFeature, CompatibleFeature, featureNamesFor, IncompatibleFeature, V2_HEADER_LENGTH, V3_HEADER_LENGTH } from "@qcow2/format"
import type { ImageHeader } from "@qcow2/format"
import { asImageError as engineError, changeRefcountOrder, completeSnapshotExtraData, expandZeroClusters } from "@qcow2/cluster"
import type { AmendProgress, Qcow2Engine } from "@qcow2/cluster"
import type { ClusterCodec } from "@qcow2/compress"
import { StorageOpener } from "@qcow2/storage"
import type { Image, OpenOptions } from "./api.js"
import { ImageError } from "./errors.js"
import { amendLuksArea, luksStorages } from "./luks.js"
import { openImage } from "./open.js"
import { qcow2Engines } from "./qcow2/image.js"

/** The options `qemu-img amend -o` changes (qcow2's amend_opts), already parsed. */
export interface AmendOptions {
  readonly compat?: "0.10" | "1.1"
  readonly size?: number
  readonly backingFile?: string
  readonly backingFormat?: string
  readonly lazyRefcounts?: boolean
  readonly refcountBits?: number
  /** New external data file name; "" removes the name. */
  readonly dataFile?: string
  readonly dataFileRaw?: boolean
  /**
   * LUKS key-slot change (the encrypt.* options), or the option error QEMU
   * reports when it reaches that step (e.g. "Parameter 'state' is missing").
   */
  readonly encryption?: LuksKeySlotAmendment | { readonly invalid: string }
  /** Secrets named by `encryption` (qemu-img's --object secret,id=…). */
  readonly secrets?: LuksSecretLookup
}

const invalid = (message: string, location: string) => new ImageError({ reason: "InvalidArgument", message, location })
const unsupported = (message: string, location: string) => new ImageError({ reason: "Unsupported", message, location })

type Env = StorageOpener | ClusterCodec

/**
 * Splits QEMU's overall progress over the amend operations, as
 * qcow2_amend_helper_cb does: the work of the operations still to come is
 * projected from those seen so far.
 */
class OperationProgress {
  private completed = 0
  private offsetCompleted = 0
  private lastWork = 0
  private current = 0
  private last = 0

  constructor(
    private readonly total: number,
    private readonly report: AmendProgress
  ) {}

  /** The reporter of operation number `operation` (1-based, in the order they run). */
  operation(operation: number): AmendProgress {
    return (done, work) => {
      this.current = operation
      if (this.current !== this.last) {
        if (this.last !== 0) {
          this.offsetCompleted += this.lastWork
          this.completed++
        }
        this.last = this.current
      }
      this.lastWork = work
      const currentWork = this.offsetCompleted + work
      const projected = Math.trunc((currentWork * (this.total - this.completed - 1)) / (this.completed + 1))
      this.report(this.offsetCompleted + done, currentWork + projected)
    }
  }
}

/** Runs `step` on the image opened read-write as qcow2, with its engine; the session ends (flushed, closed) with it. */
function withEngine<A>(
  name: string,
  openOptions: OpenOptions,
  step: (image: Image, engine: Qcow2Engine) => Effect.Effect<A, ImageError, Env>
): Effect.Effect<A, ImageError, Env> {
  return Effect.scoped(
    Effect.gen(function* () {
      const image = yield* openImage(name, { ...openOptions, readOnly: false })
      const engine = qcow2Engines.get(image)
      if (engine === undefined) return yield* unsupported(`Format driver '${image.format}' does not support option amendment`, name)
      return yield* step(image, engine)
    })
  )
}

const hasDataFile = (h: ImageHeader) => (h.header.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n
const dataFileIsRaw = (h: ImageHeader) => hasDataFile(h) && (h.header.autoclearFeatures & AutoclearFeature.RawExternalData) !== 0n

/**
 * Amends a qcow2 image in place. Failures carry QEMU's messages; a step
 * that fails leaves the steps before it done, as QEMU does.
 */
export function amendImage(
  name: string,
  options: AmendOptions,
  openOptions: OpenOptions = {},
  progress: AmendProgress = () => {}
): Effect.Effect<void, ImageError, Env> {
  return Effect.gen(function* () {
    const first = yield* withEngine(name, openOptions, (_opened, engine) =>
      Effect.gen(function* () {
        const current = engine.header.image
        const h = current.header
        if (options.encryption !== undefined) {
          if (h.cryptMethod === 0) return yield* invalid("Can't amend encryption options - encryption not present", name)
          if (h.cryptMethod !== 2) return yield* unsupported("Only LUKS encryption options can be amended", name)
        }
        const bits = options.refcountBits
        if (bits !== undefined && !(bits >= 1 && bits <= 64 && (bits & (bits - 1)) === 0)) {
          return yield* invalid("Refcount width must be a power of two and may not exceed 64 bits", name)
        }
        if (options.dataFile !== undefined && !hasDataFile(current)) return yield* invalid("data-file can only be set for images that use an external data file", name)
        if (options.dataFileRaw === true && !dataFileIsRaw(current)) return yield* invalid("data-file-raw cannot be set on existing images", name)
        const oldVersion = h.version
        const newVersion = options.compat === undefined ? oldVersion : options.compat === "0.10" ? 2 : 3
        const refcountChange = bits !== undefined && bits !== 2 ** h.refcountOrder
        const operations = new OperationProgress(
          (newVersion !== oldVersion ? 1 : 0) + (refcountChange ? 1 : 0) + (options.encryption !== undefined ? 1 : 0),
          progress
        )
        if (newVersion > oldVersion) {
          const report = operations.operation(1)
          report(0, 2)
          yield* engineError(engine.lock.withPermits(1)(completeSnapshotExtraData(engine)), name).pipe(
            Effect.mapError((e) => new ImageError({ reason: e.reason, message: `Failed to update the snapshot table: ${e.message}`, location: name, cause: e }))
          )
          report(1, 2)
          // The header as the snapshot table update left it (it may point to a new table).
          const updated = engine.header.image
          yield* rewrite(engine, {
            ...updated,
            header: { ...updated.header, version: 3, headerLength: V3_HEADER_LENGTH, refcountOrder: 4 },
            extensions: { ...updated.extensions, featureNames: featureNamesFor(3, h.clusterBits) }
          })
          report(2, 2)
        }
        if (options.encryption !== undefined) {
          const fde = engine.header.image.extensions.fullDiskEncryption
          if (fde === undefined) return yield* invalid("Can't amend encryption options - encryption not present", name)
          yield* amendKeySlots(name, options, (ciphers, amendment) =>
            amendLuksArea(engine.storage, fde.offset, fde.length, ciphers, openOptions.passphrase, amendment, options.secrets ?? (() => undefined))
          )
        }
        return { newVersion, oldVersion, refcountChange, operations }
      })
    )
    // A new key slot opens the image from now on; the one it opened with may be gone.
    const encryption = options.encryption
    const newSecret = encryption !== undefined && !("invalid" in encryption) && encryption.state === "active" && encryption.newSecret !== undefined ? options.secrets?.(encryption.newSecret) : undefined
    const reopenOptions: OpenOptions = newSecret === undefined ? openOptions : { ...openOptions, passphrase: newSecret }
    const bits = options.refcountBits
    if (first.refcountChange && bits !== undefined) {
      if (first.newVersion < 3 && bits !== 16) {
        return yield* invalid("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)", name)
      }
      const report = first.operations.operation(first.newVersion > first.oldVersion ? 2 : 1)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const opener = yield* StorageOpener
          const storage = yield* Effect.mapError(opener.open(name, { readOnly: false }), (e) => new ImageError({ reason: "Storage", message: e.message, location: name, cause: e }))
          const cluster0 = yield* withEngine(name, { ...reopenOptions, openBacking: false }, (_i, engine) => Effect.succeed(engine.header.image))
          yield* engineError(changeRefcountOrder(storage, cluster0, Math.log2(bits), report), name)
        })
      )
    }
    const laterSteps = [options.dataFile, options.dataFileRaw, options.backingFile, options.backingFormat, options.lazyRefcounts, options.size].some((o) => o !== undefined)
    if (!laterSteps && first.newVersion >= first.oldVersion) return
    yield* withEngine(name, reopenOptions, (image, engine) =>
      Effect.gen(function* () {
        let current = engine.header.image
        let autoclear = current.header.autoclearFeatures
        if (options.dataFileRaw !== undefined || dataFileIsRaw(current)) {
          const raw = options.dataFileRaw ?? dataFileIsRaw(current)
          autoclear = raw ? autoclear | AutoclearFeature.RawExternalData : autoclear & ~AutoclearFeature.RawExternalData
        }
        let extensions = current.extensions
        if (options.dataFile !== undefined) {
          const { externalDataFile: _old, ...rest } = extensions
          extensions = options.dataFile === "" ? rest : { ...rest, externalDataFile: options.dataFile }
        }
        if (autoclear !== current.header.autoclearFeatures || extensions !== current.extensions) {
          yield* rewrite(engine, { ...current, header: { ...current.header, autoclearFeatures: autoclear }, extensions })
          current = engine.header.image
        }
        if (options.backingFile !== undefined || options.backingFormat !== undefined) {
          const name0 = current.backingFile === undefined || current.backingFile === "" ? undefined : current.backingFile
          if (options.backingFile !== name0 || options.backingFormat !== current.extensions.backingFormat) {
            return yield* invalid("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.", name)
          }
        }
        const lazyNow = (current.header.compatibleFeatures & CompatibleFeature.LazyRefcounts) !== 0n
        if (options.lazyRefcounts !== undefined && options.lazyRefcounts !== lazyNow) {
          if (options.lazyRefcounts) {
            if (first.newVersion < 3) return yield* invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)", name)
            yield* engineError(engine.header.update({ compatibleFeatures: current.header.compatibleFeatures | CompatibleFeature.LazyRefcounts }), name)
          } else {
            yield* image.flush()
            yield* engineError(engine.integrity.markClean(), name)
            const h = engine.header.header
            yield* engineError(engine.header.update({ compatibleFeatures: h.compatibleFeatures & ~CompatibleFeature.LazyRefcounts }), name)
          }
        }
        if (options.size !== undefined && options.size !== 0) yield* image.truncate(options.size, { shrink: true })
        if (first.newVersion < first.oldVersion) yield* downgrade(name, image, engine, first.operations.operation(first.refcountChange ? 2 : 1))
      })
    )
  })
}

/** Runs a key-slot change with the cipher factory, or fails with the option error the CLI found. */
function amendKeySlots(
  name: string,
  options: AmendOptions,
  apply: (ciphers: SectorCipherFactoryShape, amendment: LuksKeySlotAmendment) => Effect.Effect<void, ImageError>
): Effect.Effect<void, ImageError> {
  return Effect.gen(function* () {
    const encryption = options.encryption
    if (encryption === undefined) return
    if ("invalid" in encryption) return yield* invalid(encryption.invalid, name)
    const ciphers = Option.getOrUndefined(yield* Effect.serviceOption(SectorCipherFactory))
    if (ciphers === undefined) {
      return yield* new ImageError({ reason: "Encryption", message: "no encryption backend was provided (SectorCipherFactory layer)", location: name })
    }
    yield* apply(ciphers, encryption)
  })
}

/**
 * `qemu-img amend` of a raw LUKS volume (`-f luks`; QEMU's crypto driver
 * takes only the key-slot options `state`, `keyslot`, `old-secret`,
 * `new-secret`, `iter-time`): opens it with the passphrase, then changes
 * the key slots in its header.
 */
export function amendLuksImage(
  name: string,
  options: AmendOptions,
  openOptions: OpenOptions = {}
): Effect.Effect<void, ImageError, Env> {
  return Effect.scoped(
    Effect.gen(function* () {
      const image = yield* openImage(name, { ...openOptions, format: "luks", readOnly: false })
      const storage = luksStorages.get(image)
      if (storage === undefined) return yield* unsupported(`Format driver '${image.format}' does not support option amendment`, name)
      const payload = ((yield* image.formatSpecific()).luks?.payloadOffset ?? 0) * 512
      yield* amendKeySlots(name, options, (ciphers, amendment) =>
        amendLuksArea(storage, 0, payload, ciphers, openOptions.passphrase, amendment, options.secrets ?? (() => undefined))
      )
    })
  )
}

/** Rewrites cluster 0 with `next` (header, extensions, backing name). */
const rewrite = (engine: Qcow2Engine, next: ImageHeader) => engineError(engine.lock.withPermits(1)(engine.header.rewriteAll(next)), engine.location)

/** compat=0.10 (QEMU's qcow2_downgrade): refuses what v2 cannot hold, expands zero clusters, writes a v2 header. */
function downgrade(name: string, image: Image, engine: Qcow2Engine, report: AmendProgress): Effect.Effect<void, ImageError> {
  return Effect.gen(function* () {
    const h = engine.header.header
    if (h.refcountOrder !== 4) return yield* unsupported("compat=0.10 requires refcount_bits=16", name)
    if (hasDataFile(engine.header.image)) return yield* unsupported("Cannot downgrade an image with a data file", name)
    const size = engine.virtualSize
    if (image.snapshots.some((s) => s.vmStateSize > 0xffffffff || (s.diskSize !== undefined && s.diskSize !== size))) {
      return yield* unsupported("Internal snapshots prevent downgrade of image", name)
    }
    yield* image.flush()
    yield* engineError(engine.integrity.markClean(), name)
    const others = engine.header.header.incompatibleFeatures & ~(IncompatibleFeature.CompressionType | IncompatibleFeature.Dirty)
    if (others !== 0n) return yield* unsupported(`Cannot downgrade an image with incompatible features 0x${others.toString(16)} set`, name)
    yield* engineError(expandZeroClusters(engine, image.snapshots, report), name)
    if (engine.header.header.compressionType !== 0) {
      for (let offset = 0; offset < size; ) {
        const status = yield* image.blockStatus(offset, size - offset)
        if (status.compressed) return yield* unsupported("Cannot downgrade an image with zstd compression type and existing compressed clusters", name)
        offset += status.length
      }
    }
    const current = engine.header.image
    yield* rewrite(engine, {
      ...current,
      header: {
        ...current.header,
        version: 2,
        headerLength: V2_HEADER_LENGTH,
        incompatibleFeatures: 0n,
        compatibleFeatures: 0n,
        autoclearFeatures: 0n,
        compressionType: 0,
        unknownHeaderFields: new Uint8Array(0)
      },
      extensions: { ...current.extensions, featureNames: featureNamesFor(2, current.header.clusterBits) }
    })
  })
}

