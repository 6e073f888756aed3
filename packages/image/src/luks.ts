import { Effect, Semaphore } from "effect"
import { decodeLuksHeader, LUKS_HEADER_SIZE, LUKS_SECTOR_SIZE } from "@qcow2/crypto"
import type { CryptoError, LuksHeader, LuksKeySlotAmendment, LuksSecretLookup, SectorCipher, SectorCipherFactoryShape } from "@qcow2/crypto"
import type { BlockStorageShape } from "@qcow2/storage"
import type { BlockStatus, CreateOptions, Image } from "./api.js"
import { ImageError } from "./errors.js"
import { asImageError, checkRange } from "./internal/errors.js"

/** The LUKS1 magic, "LUKS\xba\xbe" (cryptsetup's on-disk format, §2.4): QEMU probes the luks driver by it. */
export const LUKS_MAGIC = Uint8Array.of(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe)

/** Largest request encrypted in one piece (bounds the bounce buffer). */
const CHUNK = 1 << 20

/** True when `bytes` start with the LUKS1 magic. */
export const hasLuksMagic = (bytes: Uint8Array): boolean => LUKS_MAGIC.every((b, i) => bytes[i] === b)

/** The file under each open raw LUKS image, for key-slot amendment (the image's only other owner of its header area). */
export const luksStorages = new WeakMap<Image, BlockStorageShape>()

const cryptoFailure = (location: string, e: CryptoError): ImageError =>
  new ImageError({
    reason: "Encryption",
    message: e.reason === "BadPassphrase" ? "Invalid password, cannot unlock any keyslot" : e.message,
    location,
    cause: e
  })

/** Reads and decodes the LUKS1 header at the start of `storage`. */
export function readLuksHeader(storage: BlockStorageShape): Effect.Effect<LuksHeader, ImageError> {
  const location = storage.location
  return Effect.gen(function* () {
    const size = yield* asImageError(storage.size(), location)
    if (size < LUKS_HEADER_SIZE) {
      return yield* new ImageError({ reason: "Corrupt", message: "Failed to read LUKS header: the file is too short", location })
    }
    const bytes = new Uint8Array(LUKS_HEADER_SIZE)
    yield* asImageError(storage.read(0, bytes), location)
    return yield* Effect.try({
      try: () => decodeLuksHeader(bytes),
      catch: (e) => new ImageError({ reason: "Corrupt", message: e instanceof Error ? e.message : String(e), location, cause: e })
    })
  })
}

/**
 * A raw LUKS1 volume, as QEMU's `luks` driver presents it (block/crypto.c):
 * the header and key material at the start of the file, the payload from
 * `payloadOffset × 512`; guest byte `o` is file byte `payload + o`, encrypted
 * with the IV of guest sector `o / 512`. The virtual size is what follows
 * the payload offset. Requests need not be sector-aligned: partial sectors
 * are read, merged and written back under a lock, as QEMU's block layer does
 * for a driver with 512-byte request alignment.
 *
 * With no cipher (no passphrase, `noIo` opens such as `info`) only the
 * header is available and every request fails.
 */
export function makeLuksImage(
  storage: BlockStorageShape,
  readOnly: boolean,
  header: LuksHeader,
  cipher: SectorCipher | undefined
): Effect.Effect<Image, ImageError> {
  const location = storage.location
  const payload = header.payloadOffset * LUKS_SECTOR_SIZE
  return Effect.gen(function* () {
    const fileSize = yield* asImageError(storage.size(), location)
    if (payload < LUKS_HEADER_SIZE || payload > fileSize) {
      return yield* new ImageError({ reason: "Corrupt", message: `LUKS payload offset ${payload} is beyond the end of the file (${fileSize} bytes)`, location })
    }
    let size = fileSize - payload
    const rmw = Semaphore.makeUnsafe(1)
    const noKey = (): ImageError =>
      new ImageError({ reason: "Encryption", message: "Parameter 'key-secret' is required for cipher", location })
    const requireWritable = (): ImageError | undefined =>
      readOnly ? new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only`, location }) : undefined
    const crypt = (f: () => void): Effect.Effect<void, ImageError> =>
      Effect.try({ try: f, catch: (e) => cryptoFailure(location, e as CryptoError) })

    /** Decrypted whole sectors [first, first + buffer.length / 512). */
    const readSectors = (first: number, buffer: Uint8Array, c: SectorCipher): Effect.Effect<void, ImageError> =>
      Effect.flatMap(asImageError(storage.read(payload + first * LUKS_SECTOR_SIZE, buffer), location), () =>
        crypt(() => c.decrypt(first, buffer))
      )

    /** Encrypts `buffer` (whole sectors from `first`) in place and stores it. */
    const writeSectors = (first: number, buffer: Uint8Array, c: SectorCipher): Effect.Effect<void, ImageError> =>
      Effect.flatMap(
        crypt(() => c.encrypt(first, buffer)),
        () => asImageError(storage.write(payload + first * LUKS_SECTOR_SIZE, buffer), location)
      )

    const read = (offset: number, into: Uint8Array): Effect.Effect<void, ImageError> => {
      const bad = checkRange(location, size, offset, into.length)
      if (bad) return Effect.fail(bad)
      if (cipher === undefined) return Effect.fail(noKey())
      const c = cipher
      return Effect.gen(function* () {
        for (let done = 0; done < into.length; ) {
          const at = offset + done
          const first = Math.floor(at / LUKS_SECTOR_SIZE)
          const skip = at - first * LUKS_SECTOR_SIZE
          const span = Math.min(CHUNK, Math.ceil((skip + into.length - done) / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE)
          const aligned = skip === 0 && span <= into.length - done
          const buffer = aligned ? into.subarray(done, done + span) : new Uint8Array(span)
          yield* readSectors(first, buffer, c)
          const take = Math.min(span - skip, into.length - done)
          if (!aligned) into.set(buffer.subarray(skip, skip + take), done)
          done += take
        }
      })
    }

    /** Writes `length` bytes produced by `fill(buffer, from, count)` at `offset`, sector-aligned pieces at a time. */
    const writeWith = (
      offset: number,
      length: number,
      fill: (buffer: Uint8Array, at: number, from: number, count: number) => void
    ): Effect.Effect<void, ImageError> => {
      const bad = requireWritable() ?? checkRange(location, size, offset, length)
      if (bad) return Effect.fail(bad)
      if (cipher === undefined) return Effect.fail(noKey())
      const c = cipher
      return rmw.withPermits(1)(
        Effect.gen(function* () {
          for (let done = 0; done < length; ) {
            const at = offset + done
            const first = Math.floor(at / LUKS_SECTOR_SIZE)
            const skip = at - first * LUKS_SECTOR_SIZE
            const span = Math.min(CHUNK, Math.ceil((skip + length - done) / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE)
            const take = Math.min(span - skip, length - done)
            const buffer = new Uint8Array(span)
            // Partial first or last sector: keep the bytes around the request.
            if (skip !== 0) yield* readSectors(first, buffer.subarray(0, LUKS_SECTOR_SIZE), c)
            const tail = skip + take
            if (tail % LUKS_SECTOR_SIZE !== 0 && (tail > LUKS_SECTOR_SIZE || skip === 0)) {
              const last = Math.floor(tail / LUKS_SECTOR_SIZE)
              yield* readSectors(first + last, buffer.subarray(last * LUKS_SECTOR_SIZE, (last + 1) * LUKS_SECTOR_SIZE), c)
            }
            fill(buffer, skip, done, take)
            yield* writeSectors(first, buffer, c)
            done += take
          }
        })
      )
    }

    const wholeRange = (offset: number, length: number): BlockStatus => ({
      offset,
      length,
      depth: 0,
      present: true,
      zero: false,
      data: true,
      compressed: false
    })

    const image: Image = {
      format: "luks",
      location,
      readOnly,
      get virtualSize() {
        return size
      },
      clusterSize: LUKS_SECTOR_SIZE,
      header: undefined,
      snapshots: [],
      backing: undefined,
      backingFileName: undefined,
      backingFileResolved: undefined,
      dataFile: undefined,
      read,
      write: (offset, data) => writeWith(offset, data.length, (buffer, at, from, count) => buffer.set(data.subarray(from, from + count), at)),
      // The crypto driver has no zero write of its own: zeros go through the cipher.
      writeZeroes: (offset, length) => writeWith(offset, length, (buffer, at, _from, count) => buffer.fill(0, at, at + count)),
      // QEMU passes a discard to the file below: the ciphertext becomes zeros
      // (a hole), which no longer decrypts to zeros.
      discard: (offset, length) => {
        const bad = requireWritable() ?? checkRange(location, size, offset, length)
        if (bad) return Effect.fail(bad)
        return asImageError(
          storage.capabilities.discard
            ? storage.discard(payload + offset, length)
            : Effect.gen(function* () {
                const zeros = new Uint8Array(Math.min(length, CHUNK))
                for (let done = 0; done < length; done += zeros.length) {
                  yield* storage.write(payload + offset + done, zeros.subarray(0, Math.min(zeros.length, length - done)))
                }
              }),
          location
        )
      },
      writeCompressed: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "luks images cannot hold compressed data", location })),
      flush: () => asImageError(storage.flush(), location),
      truncate: (newSize, options) => {
        const bad = requireWritable()
        if (bad) return Effect.fail(bad)
        if (newSize < size && !options?.shrink) {
          return Effect.fail(new ImageError({ reason: "InvalidArgument", message: "Use the --shrink option to perform a shrink operation.", location }))
        }
        return asImageError(
          Effect.map(storage.resize(payload + newSize), () => {
            size = newSize
          }),
          location
        )
      },
      // The crypto driver reports no block status of its own: everything is data, at no host offset it can show.
      blockStatus: (offset, length) => {
        const bad = checkRange(location, size, offset, length)
        return bad ? Effect.fail(bad) : Effect.succeed(wholeRange(offset, Math.min(length, size - offset)))
      },
      formatSpecific: () => Effect.succeed({ luks: header }),
      internalSnapshots: undefined,
      makeEmpty: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "luks images cannot be emptied", location, errno: "ENOTSUP" })),
      setBacking: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "luks images have no backing file", location, errno: "ENOTSUP" })),
      check: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "This image format does not support checks", location }))
    }
    luksStorages.set(image, storage)
    return image
  })
}

/**
 * Opens a raw LUKS volume: reads the header, unlocks a key slot with the
 * passphrase (QEMU: "Parameter 'key-secret' is required for cipher" when
 * there is none, unless the open does no I/O).
 */
export function openLuks(
  storage: BlockStorageShape,
  readOnly: boolean,
  passphrase: Uint8Array | undefined,
  noIo: boolean,
  ciphers: SectorCipherFactoryShape | undefined
): Effect.Effect<Image, ImageError> {
  const location = storage.location
  return Effect.gen(function* () {
    const header = yield* readLuksHeader(storage)
    if (passphrase === undefined) {
      if (!noIo) return yield* new ImageError({ reason: "Encryption", message: "Parameter 'key-secret' is required for cipher", location })
      return yield* makeLuksImage(storage, readOnly, header, undefined)
    }
    if (ciphers === undefined) {
      return yield* new ImageError({ reason: "Encryption", message: "no encryption backend was provided (SectorCipherFactory layer)", location })
    }
    const reader = (offset: number, length: number) => {
      const out = new Uint8Array(length)
      return Effect.as(asImageError(storage.read(offset, out), location), out)
    }
    const volume = yield* Effect.mapError(ciphers.openLuks(reader, passphrase), (e) =>
      e._tag === "ImageError" ? e : cryptoFailure(location, e)
    )
    return yield* makeLuksImage(storage, readOnly, volume.header, volume.cipher)
  })
}

/**
 * `qemu-img create -f luks` options (QEMU's names, camelCased): the cipher
 * settings are those of a LUKS-encrypted qcow2 image (`CreateOptions.encryption`).
 */
export interface LuksVolumeOptions extends Omit<NonNullable<CreateOptions["encryption"]>, "format"> {
  readonly size: number
  /** off (sparse payload) or full/falloc (payload written out as zero bytes, as QEMU's file driver does). */
  readonly preallocation?: "off" | "falloc" | "full"
}

/**
 * Creates a raw LUKS1 volume as `qemu-img create -f luks` does: the header
 * and all eight key-material areas (slot 0 active), then the payload sized
 * to `size` rounded up to whole sectors.
 */
export function createLuksVolume(
  storage: BlockStorageShape,
  ciphers: SectorCipherFactoryShape,
  options: LuksVolumeOptions
): Effect.Effect<void, ImageError> {
  const location = storage.location
  return Effect.gen(function* () {
    const created = yield* Effect.mapError(
      ciphers.createLuks({
        passphrase: options.passphrase,
        cipherAlg: options.cipherAlg,
        cipherMode: options.cipherMode,
        ivgenAlg: options.ivgenAlg,
        ivgenHashAlg: options.ivgenHashAlg,
        hashAlg: options.hashAlg,
        iterTimeMs: options.iterTimeMs,
        slotIterations: options.slotIterations,
        masterKeyIterations: options.masterKeyIterations
      }),
      (e) => cryptoFailure(location, e)
    )
    created.cipher.dispose()
    const size = Math.ceil(options.size / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE
    yield* asImageError(storage.resize(0), location)
    yield* asImageError(storage.write(0, created.area), location)
    if (options.preallocation === "full" || options.preallocation === "falloc") {
      const zeros = new Uint8Array(Math.min(size, CHUNK))
      for (let done = 0; done < size; done += zeros.length) {
        yield* asImageError(storage.write(created.area.length + done, zeros.subarray(0, Math.min(zeros.length, size - done))), location)
      }
    }
    yield* asImageError(storage.resize(created.area.length + size), location)
    yield* asImageError(storage.flush(), location)
  })
}

/**
 * Adds or erases key slots of the LUKS area at `areaOffset` of `storage`
 * (`areaLength` bytes: the qcow2 FDE extension, or a raw volume's header up
 * to its payload), as `qemu-img amend -o encrypt.state=…` does. Requests
 * outside the area fail as in QEMU's qcow2 header callbacks.
 */
export function amendLuksArea(
  storage: BlockStorageShape,
  areaOffset: number,
  areaLength: number,
  ciphers: SectorCipherFactoryShape,
  unlockPassphrase: Uint8Array | undefined,
  amendment: LuksKeySlotAmendment,
  lookup: LuksSecretLookup
): Effect.Effect<void, ImageError> {
  const location = storage.location
  const outside = (offset: number, length: number) =>
    offset < 0 || length < 0 || offset + length > areaLength
      ? new ImageError({ reason: "Corrupt", message: "Request for data outside of extension header", location })
      : undefined
  const access = {
    read: (offset: number, length: number) => {
      const bad = outside(offset, length)
      if (bad) return Effect.fail(bad)
      const out = new Uint8Array(length)
      return Effect.as(asImageError(storage.read(areaOffset + offset, out), location), out)
    },
    write: (offset: number, bytes: Uint8Array) => {
      const bad = outside(offset, bytes.length)
      return bad ? Effect.fail(bad) : asImageError(storage.write(areaOffset + offset, bytes), location)
    },
    flush: () => asImageError(storage.flush(), location)
  }
  return Effect.mapError(ciphers.amendLuks(access, unlockPassphrase, amendment, lookup), (e) =>
    e._tag === "ImageError" ? e : cryptoFailure(location, e)
  )
}
