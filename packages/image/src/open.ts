import { Effect, Option } from "effect"
import type { Scope } from "effect"
import { ClusterCodec } from "@qcow2/compress"
import type { ClusterCodecShape } from "@qcow2/compress"
import type { ImageHeader } from "@qcow2/format"
import type { SectorCrypto } from "@qcow2/cluster"
import { SectorCipherFactory } from "@qcow2/crypto"
import type { CryptoError, SectorCipher, SectorCipherFactoryShape } from "@qcow2/crypto"
import { StorageOpener, strerrorOf } from "@qcow2/storage"
import type { BlockStorageShape, StorageError, StorageOpenerShape } from "@qcow2/storage"
import type { CreateOptions, Image, ImageFormat, OpenOptions } from "./api.js"
import { firstBlockLength, planCreate, writeEmptyImage } from "./create.js"
import { ImageError } from "./errors.js"
import { asImageError, toImageError } from "./internal/errors.js"
import { type CheckError, checkQcow2 } from "@qcow2/check"
import { openQcow2 } from "./qcow2/open.js"
import { qcow2Engines } from "./qcow2/image.js"
import { makeRawImage } from "./raw.js"
import { createLuksVolume, openLuks, type LuksVolumeOptions } from "./luks.js"
import { PROBE_HEADER_BYTES, probedFormat } from "./probe.js"
import { FORCE_SHARE_READ_ONLY, type FileRole, lockRequest } from "./lock.js"

/** Deepest backing chain accepted (QEMU has no fixed limit; this bounds hostile chains). */
export const MAX_BACKING_CHAIN_DEPTH = 64

/**
 * A store that cannot be opened, in QEMU's words: the file driver's own
 * "Could not open 'NAME': <strerror>" for system errors, but its refusal of
 * a file type (a FIFO, a directory: "'file' driver requires 'NAME' to be a
 * regular file") and a protocol driver's own account (NBD) as they are.
 */
const openFailure = (name: string, e: StorageError | ImageError): ImageError => {
  const inner = toImageError(e, name)
  const refusedType = e._tag === "StorageError" && (e.reason === "Unsupported" || e.driverMessage === true)
  // A system call's failure reads as QEMU's strerror() text ("No such file or directory").
  const text = e._tag === "StorageError" && e.errno !== undefined ? (strerrorOf(e.errno) ?? inner.message) : inner.message
  const message = refusedType ? inner.message : `Could not open '${name}': ${text}`
  return new ImageError({ reason: inner.reason, message, location: name, ...(inner.errno !== undefined ? { errno: inner.errno } : {}), cause: e })
}

/**
 * Takes the locks QEMU holds on a file in `role` (see {@link lockRequest});
 * a conflict fails with reason `Locked` and QEMU's message ('Failed to get
 * "write" lock' / 'Is another process using the image [NAME]?').
 */
const lockAs = (storage: BlockStorageShape, role: FileRole, readOnly: boolean, forceShare: boolean): Effect.Effect<void, ImageError> =>
  storage.lock === undefined ? Effect.void : asImageError(storage.lock(lockRequest(role, readOnly, forceShare)), storage.location)

/** QEMU's raw_open warning for a file opened for writing whose format was probed (printed by every front end that opens one so). */
export const probedRawWarning = (name: string): string =>
  `WARNING: Image format was not specified for '${name}' and probing guessed raw.\n` +
  "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
  "         Specify the 'raw' format explicitly to remove the restrictions."

/** Reads the magic to tell qcow2 and LUKS from raw (QEMU's probe, limited to the formats here). */
export function probeFormat(storage: BlockStorageShape): Effect.Effect<ImageFormat, ImageError> {
  return asImageError(
    Effect.gen(function* () {
      const size = yield* storage.size()
      const first = new Uint8Array(Math.min(size, PROBE_HEADER_BYTES))
      if (first.length > 0) yield* storage.read(0, first)
      return probedFormat(first)
    }),
    storage.location
  )
}

/** A failed check as an ImageError; the CheckError (findings so far, strerror, counters) is its cause. */
const checkFailure = (e: CheckError): ImageError => {
  const common = { location: e.location, cause: e, ...(e.offset !== undefined ? { offset: e.offset } : {}) }
  switch (e.reason) {
    case "Aborted":
      return new ImageError({ ...common, reason: e.strerror === "Cannot allocate memory" ? "NoSpace" : "Corrupt", message: e.message })
    case "Storage":
      return new ImageError({ ...common, reason: "Storage", message: e.message })
    case "NotQcow2":
    case "Unsupported":
    case "Corrupt":
      return new ImageError({ ...common, reason: e.reason, message: e.message })
  }
}

interface ChainStep {
  readonly opener: StorageOpenerShape
  readonly codec: ClusterCodecShape
  readonly options: OpenOptions
  readonly ciphers: SectorCipherFactoryShape | undefined
}

/** Largest LUKS area accepted from an image (QEMU's default is about 2 MiB). */
const MAX_LUKS_AREA = 64 * 1024 * 1024

const cryptoAdapter = (cipher: SectorCipher, ivFrom: "guest" | "host"): SectorCrypto => ({
  ivFrom,
  encrypt: (offset, data) => cipher.encrypt(offset / 512, data),
  decrypt: (offset, data) => cipher.decrypt(offset / 512, data)
})

const describeCryptoError = (e: CryptoError): string => {
  switch (e.reason) {
    case "BadPassphrase":
      return "Invalid password, cannot unlock any keyslot"
    case "UnsupportedCipher":
    case "InvalidLuksHeader":
    case "InvalidArgument":
      return e.message
    default: {
      const unknown: never = e.reason
      return `crypto error ${String(unknown)}`
    }
  }
}

/** Unlocks an encrypted image with the passphrase of the open options (legacy AES or LUKS). */
function unlocker(step: ChainStep, name: string) {
  return (image: ImageHeader, storage: BlockStorageShape): Effect.Effect<SectorCrypto | undefined, ImageError> =>
    Effect.gen(function* () {
      const passphrase = step.options.passphrase
      if (passphrase === undefined) {
        if (step.options.noIo === true) return undefined
        return yield* new ImageError({ reason: "Encryption", message: "Parameter 'encrypt.key-secret' is required for cipher", location: name })
      }
      const ciphers = step.ciphers
      if (ciphers === undefined) {
        return yield* new ImageError({ reason: "Encryption", message: "no encryption backend was provided (SectorCipherFactory layer)", location: name })
      }
      const method = image.header.cryptMethod
      if (method === 1) return cryptoAdapter(ciphers.legacyAes(passphrase), "guest")
      if (method !== 2) {
        return yield* new ImageError({ reason: "Unsupported", message: `Unsupported encryption method: ${method}`, location: name })
      }
      const fde = image.extensions.fullDiskEncryption
      const fileSize = yield* asImageError(storage.size(), name)
      if (fde === undefined || fde.length <= 0 || fde.length > MAX_LUKS_AREA || fde.offset + fde.length > fileSize) {
        return yield* new ImageError({ reason: "Corrupt", message: "The LUKS header extension is missing or points outside the image", location: name })
      }
      const reader = (offset: number, length: number) => {
        if (offset < 0 || length < 0 || offset + length > fde.length) {
          return Effect.fail(new ImageError({ reason: "Corrupt", message: "LUKS key material lies outside the LUKS area", location: name }))
        }
        const out = new Uint8Array(length)
        return Effect.as(asImageError(storage.read(fde.offset + offset, out), name), out)
      }
      const volume = yield* Effect.mapError(ciphers.openLuks(reader, passphrase), (e) =>
        e instanceof ImageError ? e : new ImageError({ reason: "Encryption", message: describeCryptoError(e as CryptoError), location: name, cause: e })
      )
      return cryptoAdapter(volume.cipher, "host")
    })
}

function openNamed(
  step: ChainStep,
  name: string,
  format: ImageFormat | undefined,
  readOnly: boolean,
  seen: ReadonlyArray<string>
): Effect.Effect<Image, ImageError, Scope.Scope> {
  return Effect.gen(function* () {
    // Compare canonical names (a relative top-level name and the absolute
    // name a backing reference resolves to are the same file).
    const canonicalName = (n: string) => step.opener.resolve(n, n.slice(n.lastIndexOf("/") + 1))
    const canonical = canonicalName(name)
    const canonicalSeen = seen.map(canonicalName)
    if (canonicalSeen.includes(canonical)) {
      return yield* new ImageError({
        reason: "BackingChain",
        message: `Backing file loop: ${[...seen, name].join(" -> ")}`,
        location: name
      })
    }
    if (seen.length > MAX_BACKING_CHAIN_DEPTH) {
      return yield* new ImageError({
        reason: "BackingChain",
        message: `Backing chain is deeper than ${MAX_BACKING_CHAIN_DEPTH} images`,
        location: name
      })
    }
    const storage = yield* Effect.mapError(step.opener.open(name, { readOnly }), (e) => openFailure(name, e))
    const actual = format ?? (yield* probeFormat(storage))
    const forceShare = step.options.forceShare === true
    // The luks driver is a format layer over its file, as qcow2 is: it takes the same locks.
    yield* lockAs(storage, actual === "luks" ? "qcow2" : actual, readOnly, forceShare)
    if (actual === "raw") {
      const probed = format === undefined
      // QEMU's raw driver warns when it opens a probed file for writing, and guards its block 0.
      if (probed && !readOnly) step.options.report?.(probedRawWarning(name))
      return yield* makeRawImage(storage, readOnly, probed)
    }
    if (actual === "luks") return yield* openLuks(storage, readOnly, step.options.passphrase, step.options.noIo === true, step.ciphers)
    const chain = [...seen, name]
    return yield* openQcow2({
      storage,
      readOnly,
      options: step.options,
      // backing.driver names the format of this image's own backing file only.
      ...(seen.length === 0 && step.options.backingFormat !== undefined ? { backingFormat: step.options.backingFormat } : {}),
      codec: step.codec,
      resolveBacking: (backing) => step.opener.resolve(name, backing),
      openBacking: (backing, backingFormat) => {
        const resolved = step.opener.resolve(name, backing)
        const backingKey = step.options.backingPassphrase
        const below = seen.length === 0 && backingKey !== undefined ? { ...step, options: { ...step.options, passphrase: backingKey } } : step
        return Effect.mapError(openNamed(below, resolved, backingFormat, step.options.readWriteBacking !== resolved, chain), (e) =>
          e.reason === "BackingChain" ? e : new ImageError({ ...e, reason: "BackingChain", message: `Could not open backing file: ${e.message}` })
        )
      },
      // QEMU opens a relative data file name as given (relative to the working directory).
      unlock: unlocker(step, name),
      openDataFile: (dataFile) =>
        Effect.tap(Effect.mapError(step.opener.open(dataFile, { readOnly }), (e) => openFailure(dataFile, e)), (data) =>
          lockAs(data, "data-file", readOnly, forceShare)
        ),
      check: (repair) => Effect.mapError(checkQcow2(storage, repair === undefined ? {} : { repair }), checkFailure)
    })
  })
}

/**
 * Opens an image (qcow2 or raw, probed unless `options.format` says) with
 * its backing chain, as a scoped resource: closing the scope flushes and
 * closes every file. Backing names are resolved against the image that
 * names them; loops and chains deeper than 64 are refused.
 */
export function openImage(name: string, options: OpenOptions = {}): Effect.Effect<Image, ImageError, Scope.Scope | StorageOpener | ClusterCodec> {
  // An encryption backend (SectorCipherFactory) is used when provided; it is
  // optional so that images without encryption need none.
  return Effect.gen(function* () {
    const opener = yield* StorageOpener
    const codec = yield* ClusterCodec
    const ciphers = Option.getOrUndefined(yield* Effect.serviceOption(SectorCipherFactory))
    if (options.forceShare === true && options.readOnly !== true) {
      return yield* new ImageError({ reason: "InvalidArgument", message: FORCE_SHARE_READ_ONLY, location: name })
    }
    return yield* openNamed({ opener, codec, options, ciphers }, name, options.format, options.readOnly ?? false, [])
  })
}

/**
 * Creates a qcow2 image the way `qemu-img create -f qcow2` does: an empty
 * image of size 0, grown to its size through the driver, then preallocated
 * as asked. The size defaults to the backing file's.
 */
export function createImage(name: string, options: CreateOptions): Effect.Effect<void, ImageError, Scope.Scope | StorageOpener | ClusterCodec> {
  return Effect.scoped(
    Effect.gen(function* () {
      const opener = yield* StorageOpener
      const codec = yield* ClusterCodec
      const ciphers = Option.getOrUndefined(yield* Effect.serviceOption(SectorCipherFactory))
      const encryption = options.encryption
      if (encryption !== undefined && ciphers === undefined) {
        return yield* new ImageError({ reason: "Encryption", message: "no encryption backend was provided (SectorCipherFactory layer)", location: name })
      }
      if (encryption !== undefined && options.preallocation !== undefined && options.preallocation !== "off" && options.preallocation !== "metadata") {
        return yield* new ImageError({ reason: "Unsupported", message: "Preallocation falloc/full is not supported together with encryption", location: name })
      }
      let size = options.size
      if (options.backingFile !== undefined && size === undefined) {
        const backingName = opener.resolve(name, options.backingFile)
        const backing = yield* Effect.scoped(
          openNamed({ opener, codec, options: {}, ciphers }, backingName, options.backingFormat, true, [])
        ).pipe(Effect.map((image) => image.virtualSize))
        size = backing
      }
      if (size === undefined) return yield* new ImageError({ reason: "InvalidArgument", message: "Image creation needs a size parameter", location: name })
      const plan = yield* planCreate(options, size)
      // As qemu-img: files are truncated only once their locks are held, so
      // creating over an image another process uses fails and leaves it be.
      // They are closed again before the driver opens them: a store has one
      // writer at a time (closing drops the creation locks, as QEMU does).
      yield* Effect.scoped(
        Effect.gen(function* () {
          const createFile = (file: string) =>
            Effect.gen(function* () {
              const created = yield* Effect.mapError(opener.open(file, { readOnly: false, create: true }), (e) => openFailure(file, e))
              yield* lockAs(created, "create", false, false)
              yield* asImageError(created.resize(0), file)
              return created
            })
          const storage = yield* createFile(name)
          const data = plan.dataFile !== undefined ? yield* createFile(plan.dataFile) : undefined
          // The data file gets the virtual size at once (sparse); falloc and full fill it while preallocating.
          if (data !== undefined && (plan.preallocation === "off" || plan.preallocation === "metadata")) {
            yield* asImageError(data.resize(plan.size), data.location)
            yield* asImageError(data.write(0, new Uint8Array(firstBlockLength(plan.size))), data.location)
          }
          yield* writeEmptyImage(storage, plan)
        })
      )
      yield* Effect.scoped(
        Effect.gen(function* () {
          const image = yield* openNamed({ opener, codec, options: { openBacking: false }, ciphers }, name, "qcow2", false, [])
          if (plan.size > 0) yield* image.truncate(plan.size, { preallocation: plan.preallocation })
          if (encryption !== undefined && ciphers !== undefined) {
            const engine = qcow2Engines.get(image)!
            if (encryption.format === "aes") {
              yield* engine.setUpEncryption(undefined)
            } else {
              const created = yield* Effect.mapError(
                ciphers.createLuks({
                  passphrase: encryption.passphrase,
                  cipherAlg: encryption.cipherAlg,
                  cipherMode: encryption.cipherMode,
                  ivgenAlg: encryption.ivgenAlg,
                  ivgenHashAlg: encryption.ivgenHashAlg,
                  hashAlg: encryption.hashAlg,
                  iterTimeMs: encryption.iterTimeMs,
                  slotIterations: encryption.slotIterations,
                  masterKeyIterations: encryption.masterKeyIterations
                }),
                (e) => new ImageError({ reason: "Encryption", message: describeCryptoError(e), location: name, cause: e })
              )
              yield* engine.setUpEncryption(created.area)
              created.cipher.dispose()
            }
          }
          yield* image.flush()
        })
      )
    })
  )
}

export type { CreateOptions }

/**
 * Creates a raw LUKS1 volume (`qemu-img create -f luks`): needs the
 * SectorCipherFactory layer for the key material.
 */
export function createLuksImage(name: string, options: LuksVolumeOptions): Effect.Effect<void, ImageError, StorageOpener> {
  return Effect.scoped(
    Effect.gen(function* () {
      const opener = yield* StorageOpener
      const ciphers = Option.getOrUndefined(yield* Effect.serviceOption(SectorCipherFactory))
      if (ciphers === undefined) {
        return yield* new ImageError({ reason: "Encryption", message: "no encryption backend was provided (SectorCipherFactory layer)", location: name })
      }
      const storage = yield* Effect.mapError(opener.open(name, { readOnly: false, create: true, truncate: true }), (e) => openFailure(name, e))
      yield* createLuksVolume(storage, ciphers, options)
    })
  )
}
