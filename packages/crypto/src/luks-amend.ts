/**
 * LUKS1 key-slot management (LUKS1 spec §4.1 "Adding a key", §4.3 "Key
 * revocation") with the options, checks and messages of QEMU's
 * `qemu-img amend -o encrypt.state=…` (crypto/block-luks.c, amend of a
 * LUKS block: add_keyslot / erase_keyslots).
 *
 * Crash safety: a key slot is filled in two steps, key material first
 * (into a slot that is not active, unless `force` overwrites an active one),
 * a flush, then the header that activates it; a slot is revoked header first,
 * then its material is overwritten. Each header write changes only the one
 * slot record being updated, so a torn write can damage that slot but never
 * another: an interrupted amend leaves every other slot that worked working.
 */
import { Effect } from "effect"
import { afSplit } from "./af.js"
import type { CryptoBackend } from "./backend.js"
import { CryptoError, invalidArgument, invalidLuksHeader } from "./errors.js"
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_HEADER_SIZE,
  LUKS_SALT_SIZE,
  type LuksHeader,
  type LuksKeySlot
} from "./luks-header.js"
import {
  DEFAULT_ITER_TIME_MS,
  luksHeaderAlgorithms,
  measurePbkdf2,
  pbkdf2,
  scaleIterations,
  sectorRound,
  tryKeySlot,
  unlockLuksHeader,
  type LuksAreaReader
} from "./luks.js"
import { makeSectorCipher } from "./modes.js"
import type { CipherSpec, HashName } from "./spec.js"

/** Read, write and flush bytes of a LUKS area (offsets from the header start). */
export interface LuksAreaAccess<E> {
  readonly read: LuksAreaReader<E>
  readonly write: (offset: number, bytes: Uint8Array) => Effect.Effect<void, E>
  /** Makes the writes so far durable: the barrier between key material and the header that activates it. */
  readonly flush: () => Effect.Effect<void, E>
}

/**
 * One key-slot change, as QEMU's QCryptoBlockAmendOptionsLUKS: `active`
 * stores `newSecret` in `keyslot` (default: the first inactive slot) under
 * the master key unlocked with the image's own passphrase; `inactive` erases
 * `keyslot`, or every slot `oldSecret` opens. Secrets are named by id, as
 * qemu-img's `--object secret,id=…`; `force` allows what would overwrite an
 * active slot or leave no active slot.
 */
export interface LuksKeySlotAmendment {
  readonly state: "active" | "inactive"
  readonly keyslot?: number | undefined
  readonly oldSecret?: string | undefined
  readonly newSecret?: string | undefined
  /** PBKDF2 time for the new slot in ms (QEMU's default 2000). */
  readonly iterTimeMs?: number | undefined
  readonly force?: boolean | undefined
  /** Fixed PBKDF2 iterations for the new slot instead of measuring (tests, reproducible builds). */
  readonly slotIterations?: number | undefined
}

/** Looks a secret up by id; undefined when there is none. */
export type LuksSecretLookup = (id: string) => Uint8Array | undefined

/** Key slots in a LUKS1 header (QCRYPTO_BLOCK_LUKS_NUM_KEY_SLOTS). */
const NUM_KEY_SLOTS = 8
/** Times a revoked slot's material is overwritten with random bytes (QEMU's QCRYPTO_BLOCK_LUKS_ERASE_ITERATIONS). */
const ERASE_PASSES = 40

const secretOf = (lookup: LuksSecretLookup, id: string): Uint8Array | CryptoError =>
  lookup(id) ?? invalidArgument(`No secret with id '${id}'`)

const withSlot = (header: LuksHeader, index: number, slot: LuksKeySlot): LuksHeader => ({
  ...header,
  keySlots: header.keySlots.map((s, i) => (i === index ? slot : s))
})

const activeCount = (header: LuksHeader): number => header.keySlots.filter((s) => s.active).length

const encodeHeader = (header: LuksHeader): Effect.Effect<Uint8Array, CryptoError> =>
  Effect.try({
    try: () => encodeLuksHeader(header),
    catch: (e) => (e instanceof CryptoError ? e : invalidLuksHeader(String(e)))
  })

/** Writes the 592-byte header (the slot records QEMU rewrites in place). */
const storeHeader = <E>(access: LuksAreaAccess<E>, header: LuksHeader): Effect.Effect<void, E | CryptoError> =>
  Effect.flatMap(encodeHeader(header), (bytes) => access.write(0, bytes))

/**
 * Fills slot `index` with `password` over `masterKey` (QEMU's store_key):
 * new salt, iterations measured for `iterTimeMs`, AF-split material
 * encrypted with the PBKDF2 slot key; material, flush, then header.
 */
const storeKey = <E>(
  backend: CryptoBackend,
  access: LuksAreaAccess<E>,
  header: LuksHeader,
  algorithms: { readonly spec: CipherSpec; readonly hash: HashName },
  index: number,
  password: Uint8Array,
  masterKey: Uint8Array,
  iterTimeMs: number,
  fixedIterations: number | undefined
): Effect.Effect<LuksHeader, E | CryptoError> =>
  Effect.gen(function* () {
    const old = header.keySlots[index]!
    const salt = backend.randomBytes(LUKS_SALT_SIZE)
    const iterations =
      fixedIterations ?? scaleIterations(yield* measurePbkdf2(backend, algorithms.hash, password, salt, header.keyBytes), iterTimeMs, 1)
    if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0xffffffff) {
      return yield* invalidArgument(`PBKDF iterations ${iterations} larger than ${0xffffffff}: Numerical result out of range`)
    }
    const slotKey = yield* pbkdf2(backend, algorithms.hash, password, salt, iterations, header.keyBytes)
    const splitLength = header.keyBytes * old.stripes
    const split = afSplit(backend.digest, algorithms.hash, masterKey, old.stripes, backend.randomBytes)
    const material = new Uint8Array(sectorRound(splitLength))
    material.set(split)
    split.fill(0)
    const cipher = makeSectorCipher(backend, algorithms.spec, slotKey)
    slotKey.fill(0)
    cipher.encrypt(0, material)
    cipher.dispose()
    yield* access.write(old.keyMaterialOffset * 512, material.subarray(0, splitLength)).pipe(
      Effect.ensuring(Effect.sync(() => material.fill(0)))
    )
    yield* access.flush()
    const next = withSlot(header, index, { ...old, active: true, iterations, salt })
    yield* storeHeader(access, next)
    yield* access.flush()
    return next
  })

/** Revokes slot `index` (QEMU's erase_key): header first, then the material overwritten with random bytes. */
const eraseKey = <E>(
  backend: CryptoBackend,
  access: LuksAreaAccess<E>,
  header: LuksHeader,
  index: number
): Effect.Effect<LuksHeader, E | CryptoError> =>
  Effect.gen(function* () {
    const old = header.keySlots[index]!
    const next = withSlot(header, index, { ...old, active: false, iterations: 0, salt: new Uint8Array(LUKS_SALT_SIZE) })
    yield* storeHeader(access, next)
    yield* access.flush()
    const length = header.keyBytes * old.stripes
    for (let pass = 0; pass < ERASE_PASSES; pass++) {
      yield* access.write(old.keyMaterialOffset * 512, backend.randomBytes(length))
    }
    yield* access.flush()
    return next
  })

const addKeySlot = <E>(
  backend: CryptoBackend,
  access: LuksAreaAccess<E>,
  header: LuksHeader,
  unlockPassphrase: Uint8Array | undefined,
  amendment: LuksKeySlotAmendment,
  lookup: LuksSecretLookup
): Effect.Effect<void, E | CryptoError> =>
  Effect.gen(function* () {
    if (amendment.newSecret === undefined) return yield* invalidArgument("'new-secret' is required to activate a keyslot")
    if (amendment.oldSecret !== undefined) return yield* invalidArgument("'old-secret' must not be given when activating keyslots")
    let index: number
    if (amendment.keyslot !== undefined) {
      index = amendment.keyslot
      if (!(index >= 0 && index < NUM_KEY_SLOTS)) {
        // QEMU prints the index unsigned here.
        return yield* invalidArgument(`Invalid keyslot ${index >>> 0} specified, must be between 0 and ${NUM_KEY_SLOTS - 1}`)
      }
    } else {
      index = header.keySlots.findIndex((s) => !s.active)
      if (index < 0) return yield* invalidArgument("Can't add a keyslot - all keyslots are in use")
    }
    if (amendment.force !== true && header.keySlots[index]!.active) {
      return yield* invalidArgument(`Refusing to overwrite active keyslot ${index} - please erase it first`)
    }
    if (unlockPassphrase === undefined) return yield* invalidArgument("Parameter 'key-secret' is required for cipher")
    const unlocked = yield* unlockLuksHeader(backend, header, access.read, unlockPassphrase)
    const masterKey = unlocked.masterKey
    yield* Effect.gen(function* () {
      const password = secretOf(lookup, amendment.newSecret!)
      if (password instanceof CryptoError) return yield* password
      yield* storeKey(backend, access, header, unlocked, index, password, masterKey, amendment.iterTimeMs ?? DEFAULT_ITER_TIME_MS, amendment.slotIterations)
    }).pipe(Effect.ensuring(Effect.sync(() => masterKey.fill(0))))
  })

const eraseKeySlots = <E>(
  backend: CryptoBackend,
  access: LuksAreaAccess<E>,
  header: LuksHeader,
  amendment: LuksKeySlotAmendment,
  lookup: LuksSecretLookup
): Effect.Effect<void, E | CryptoError> =>
  Effect.gen(function* () {
    if (amendment.newSecret !== undefined) return yield* invalidArgument("'new-secret' must not be given when erasing keyslots")
    if (amendment.iterTimeMs !== undefined) return yield* invalidArgument("'iter-time' must not be given when erasing keyslots")
    let oldPassword: Uint8Array | undefined
    if (amendment.oldSecret !== undefined) {
      const found = secretOf(lookup, amendment.oldSecret)
      if (found instanceof CryptoError) return yield* found
      oldPassword = found
    }
    const algorithms = luksHeaderAlgorithms(header)
    if (algorithms instanceof CryptoError) return yield* algorithms
    /** Whether `password` opens slot `i` (an inactive slot never does). */
    const opens = (i: number, password: Uint8Array) =>
      Effect.gen(function* () {
        const slot = header.keySlots[i]!
        if (!slot.active) return false
        const key = yield* tryKeySlot(backend, header, algorithms.spec, algorithms.hash, slot, access.read, password)
        key?.fill(0)
        return key !== undefined
      })
    const force = amendment.force === true
    if (amendment.keyslot !== undefined) {
      const index = amendment.keyslot
      if (!(index >= 0 && index < NUM_KEY_SLOTS)) {
        return yield* invalidArgument(`Invalid keyslot ${index} specified, must be between 0 and ${NUM_KEY_SLOTS - 1}`)
      }
      if (oldPassword !== undefined && !(yield* opens(index, oldPassword))) {
        return yield* invalidArgument(`Given keyslot ${index} doesn't contain the given old password for erase operation`)
      }
      if (!force && !header.keySlots[index]!.active) {
        return yield* invalidArgument(`Given keyslot ${index} is already erased (inactive) `)
      }
      if (!force && activeCount(header) === 1) {
        return yield* invalidArgument(
          `Attempt to erase the only active keyslot ${index} which will erase all the data in the image irreversibly - refusing operation`
        )
      }
      yield* eraseKey(backend, access, header, index)
      return
    }
    if (oldPassword === undefined) {
      return yield* invalidArgument(
        "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given"
      )
    }
    const matching: Array<number> = []
    for (let i = 0; i < NUM_KEY_SLOTS; i++) if (yield* opens(i, oldPassword)) matching.push(i)
    if (matching.length === 0) return yield* invalidArgument("No keyslots match given (old) password for erase operation")
    if (!force && matching.length === activeCount(header)) {
      return yield* invalidArgument(
        "All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation"
      )
    }
    let current = header
    for (const i of matching) current = yield* eraseKey(backend, access, current, i)
  })

/**
 * Applies one key-slot change to the LUKS1 area behind `access`, as
 * `qemu-img amend` does for a LUKS-encrypted qcow2 or a raw LUKS volume.
 * `unlockPassphrase` is the passphrase the image was opened with (QEMU
 * unlocks the master key with it to fill a new slot). Fails with a
 * CryptoError carrying QEMU's message: reason `InvalidArgument` for refused
 * options, `BadPassphrase` when the passphrase opens no slot.
 */
export const amendLuksKeySlots = <E>(
  backend: CryptoBackend,
  access: LuksAreaAccess<E>,
  unlockPassphrase: Uint8Array | undefined,
  amendment: LuksKeySlotAmendment,
  lookup: LuksSecretLookup
): Effect.Effect<void, E | CryptoError> =>
  Effect.gen(function* () {
    const bytes = yield* access.read(0, LUKS_HEADER_SIZE)
    const header = yield* Effect.try({
      try: () => decodeLuksHeader(bytes),
      catch: (e) => (e instanceof CryptoError ? e : invalidLuksHeader(String(e)))
    })
    switch (amendment.state) {
      case "active":
        return yield* addKeySlot(backend, access, header, unlockPassphrase, amendment, lookup)
      case "inactive":
        return yield* eraseKeySlots(backend, access, header, amendment, lookup)
    }
  })
