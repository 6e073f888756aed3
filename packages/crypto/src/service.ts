import { Context, Effect, Layer } from "effect"
import type { CryptoBackend } from "./backend.js"
import { CryptoError, invalidArgument, invalidLuksHeader } from "./errors.js"
import { decodeLuksHeader, LUKS_HEADER_SIZE, type LuksHeader } from "./luks-header.js"
import {
  createLuksArea,
  passphraseBytes,
  unlockLuksHeader,
  type CreateLuksOptions,
  type LuksAreaReader
} from "./luks.js"
import { amendLuksKeySlots, type LuksAreaAccess, type LuksKeySlotAmendment, type LuksSecretLookup } from "./luks-amend.js"
import { makeSectorCipher, type SectorCipher } from "./modes.js"
import { LEGACY_AES_SPEC, type CipherSpec } from "./spec.js"
import { portableBackend } from "./portable.js"

/** An unlocked LUKS volume: its header, the slot that opened and a payload cipher. */
export interface LuksVolume {
  readonly header: LuksHeader
  /** Index of the key slot the passphrase unlocked. */
  readonly slot: number
  /** Payload cipher keyed with the master key (IV sector = host offset / 512 in qcow2). */
  readonly cipher: SectorCipher
}

/** A freshly created LUKS area and a payload cipher keyed with its new master key. */
export interface CreatedLuks {
  /**
   * The whole LUKS area, `header.payloadOffset × 512` bytes: header, padding
   * to 4096, 8 key-material regions (only slot 0 filled). Store it at the qcow2
   * FDE extension offset with extension length `area.length`.
   */
  readonly area: Uint8Array
  readonly header: LuksHeader
  readonly cipher: SectorCipher
}

/** What {@link SectorCipherFactory} offers. */
export interface SectorCipherFactoryShape {
  /** Kernel implementation name: `"node"` or `"portable"`. */
  readonly backend: string
  /**
   * Unlock a LUKS1 area: either its bytes (from the header start; at least
   * through the active key slots' material) or a reader of byte ranges in it.
   * Fails with a CryptoError (reason `BadPassphrase`, `UnsupportedCipher`,
   * `InvalidLuksHeader` or `InvalidArgument`) or the reader's error.
   */
  readonly openLuks: <E = never>(
    area: Uint8Array | LuksAreaReader<E>,
    passphrase: Uint8Array | string
  ) => Effect.Effect<LuksVolume, CryptoError | E>
  /**
   * Add or erase key slots of a LUKS1 area like `qemu-img amend -o
   * encrypt.state=…` (see amendLuksKeySlots); `unlockPassphrase` is the one
   * the image was opened with.
   */
  readonly amendLuks: <E = never>(
    access: LuksAreaAccess<E>,
    unlockPassphrase: Uint8Array | string | undefined,
    amendment: LuksKeySlotAmendment,
    lookup: LuksSecretLookup
  ) => Effect.Effect<void, CryptoError | E>
  /** Create a LUKS1 area like `qemu-img create -o encrypt.format=luks` (see createLuksArea). */
  readonly createLuks: (options: CreateLuksOptions) => Effect.Effect<CreatedLuks, CryptoError>
  /**
   * Legacy qcow2 AES (crypt_method 1): AES-128-CBC, plain64 IV of the guest
   * sector, key = passphrase bytes (UTF-8) truncated or zero-padded to 16
   * (QEMU crypto/block-qcow.c). Broken by design; for reading old images.
   */
  readonly legacyAes: (passphrase: Uint8Array | string) => SectorCipher
  /** A sector cipher for an explicit spec and key (throws a CryptoError, reason InvalidArgument, on a bad key length). */
  readonly sectorCipher: (spec: CipherSpec, key: Uint8Array) => SectorCipher
}

/**
 * Builds sector ciphers for qcow2 encryption. Provide it with
 * {@link layerPortable} (@noble, any platform) or `layerNode` from
 * `@qcow2/crypto/node` (node:crypto, much faster).
 */
export class SectorCipherFactory extends Context.Service<SectorCipherFactory, SectorCipherFactoryShape>()(
  "@qcow2/crypto/SectorCipherFactory"
) {}

/** Decode a LUKS1 header as an Effect (see {@link decodeLuksHeader}). */
const parseLuksHeader = (bytes: Uint8Array): Effect.Effect<LuksHeader, CryptoError> =>
  Effect.try({
    try: () => decodeLuksHeader(bytes),
    catch: (e) => (e instanceof CryptoError ? e : invalidLuksHeader(String(e)))
  })

const bytesReader = (area: Uint8Array): LuksAreaReader<CryptoError> => (offset, length) =>
  offset + length <= area.length
    ? Effect.succeed(area.subarray(offset, offset + length))
    : Effect.fail(invalidLuksHeader(`LUKS area of ${area.length} bytes does not contain bytes ${offset}..${offset + length}`))

/** Legacy qcow2 AES key: the passphrase's first 16 bytes, zero-padded (crypto/block-qcow.c). */
const legacyAesKey = (passphrase: Uint8Array | string): Uint8Array => {
  const bytes = passphraseBytes(passphrase)
  const key = new Uint8Array(16)
  key.set(bytes.subarray(0, 16))
  bytes.fill(0)
  return key
}

/** Build the factory on a given set of kernels. */
export const makeSectorCipherFactory = (backend: CryptoBackend): SectorCipherFactoryShape => {
  const sectorCipher = (spec: CipherSpec, key: Uint8Array): SectorCipher => makeSectorCipher(backend, spec, key)

  const openLuks = <E = never>(
    area: Uint8Array | LuksAreaReader<E>,
    passphrase: Uint8Array | string
  ): Effect.Effect<LuksVolume, CryptoError | E> =>
    Effect.gen(function* () {
      const read: LuksAreaReader<E | CryptoError> = area instanceof Uint8Array ? bytesReader(area) : area
      const headerBytes = yield* read(0, LUKS_HEADER_SIZE)
      const header = yield* parseLuksHeader(headerBytes)
      const pass = passphraseBytes(passphrase)
      const unlocked = yield* unlockLuksHeader(backend, header, read, pass).pipe(Effect.ensuring(Effect.sync(() => pass.fill(0))))
      const cipher = yield* Effect.try({
        try: () => makeSectorCipher(backend, unlocked.spec, unlocked.masterKey),
        catch: (e) => (e instanceof CryptoError ? e : invalidArgument(String(e)))
      }).pipe(Effect.ensuring(Effect.sync(() => unlocked.masterKey.fill(0))))
      return { header, slot: unlocked.slot, cipher }
    }).pipe(Effect.withSpan("SectorCipherFactory.openLuks"))

  const createLuks = Effect.fn("SectorCipherFactory.createLuks")(function* (options: CreateLuksOptions) {
    const created = yield* createLuksArea(backend, options)
    const cipher = makeSectorCipher(backend, created.spec, created.masterKey)
    created.masterKey.fill(0)
    return { area: created.area, header: created.header, cipher } satisfies CreatedLuks
  })

  const amendLuks = <E = never>(
    access: LuksAreaAccess<E>,
    unlockPassphrase: Uint8Array | string | undefined,
    amendment: LuksKeySlotAmendment,
    lookup: LuksSecretLookup
  ): Effect.Effect<void, CryptoError | E> => {
    const pass = unlockPassphrase === undefined ? undefined : passphraseBytes(unlockPassphrase)
    return amendLuksKeySlots(backend, access, pass, amendment, lookup).pipe(
      Effect.ensuring(Effect.sync(() => pass?.fill(0))),
      Effect.withSpan("SectorCipherFactory.amendLuks")
    )
  }

  return {
    backend: backend.name,
    openLuks,
    amendLuks,
    createLuks,
    legacyAes: (passphrase) => {
      const key = legacyAesKey(passphrase)
      const cipher = makeSectorCipher(backend, LEGACY_AES_SPEC, key)
      key.fill(0)
      return cipher
    },
    sectorCipher
  }
}

/**
 * {@link SectorCipherFactory} on the portable (@noble) kernels. Marked pure
 * so that a bundle which never uses it leaves out noble's AES, whose
 * tables are built when its module is evaluated (~20-60 ms of every start).
 */
export const layerPortable: Layer.Layer<SectorCipherFactory> = /* @__PURE__ */ Layer.succeed(
  SectorCipherFactory,
  /* @__PURE__ */ makeSectorCipherFactory(portableBackend)
)
