/**
 * LUKS1 key-slot unlocking and volume creation (LUKS1 spec §4, "Operations"),
 * following QEMU's crypto/block-luks.c behaviour for the choices the spec
 * leaves open (iteration counting, layout, defaults).
 */
import { Effect } from "effect"
import { afMerge, afSplit } from "./af.js"
import type { CryptoBackend } from "./backend.js"
import { badPassphrase, CryptoError, invalidArgument, invalidLuksHeader, unsupportedCipher } from "./errors.js"
import {
  encodeLuksHeader,
  keyMaterialSectors,
  LUKS_DIGEST_SIZE,
  LUKS_MIN_ITERATIONS,
  LUKS_SALT_SIZE,
  LUKS_SECTOR_SIZE,
  LUKS_STRIPES,
  LUKS_VERSION,
  luksLayout,
  type LuksHeader,
  type LuksKeySlot
} from "./luks-header.js"
import { makeSectorCipher } from "./modes.js"
import {
  isHashName,
  resolveLuksCipher,
  specCipherMode,
  specCipherName,
  specFromOptions,
  specKeyBytes,
  type CipherSpec,
  type CipherSpecOptions,
  type HashName
} from "./spec.js"

/**
 * Reads `length` bytes at `offset` (bytes from the start of the LUKS header,
 * i.e. from the qcow2 FDE extension offset).
 */
export type LuksAreaReader<E> = (offset: number, length: number) => Effect.Effect<Uint8Array, E>

/** Cipher spec and PBKDF2/AF hash a header names, or why they are unsupported. */
export const luksHeaderAlgorithms = (
  header: LuksHeader
): { readonly spec: CipherSpec; readonly hash: HashName } | CryptoError => {
  const spec = resolveLuksCipher(header.cipherName, header.cipherMode, header.keyBytes)
  if (spec instanceof CryptoError) return spec
  if (!isHashName(header.hashSpec)) {
    return unsupportedCipher(header.cipherName, header.cipherMode, `unknown hash ${header.hashSpec}`, header.hashSpec)
  }
  return { spec, hash: header.hashSpec }
}

const constantTimeEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!
  return diff === 0
}

export const pbkdf2 = (
  backend: CryptoBackend,
  hash: HashName,
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  length: number
): Effect.Effect<Uint8Array> => Effect.promise(() => backend.pbkdf2(hash, password, salt, iterations, length))

/** Round a byte count up to whole 512-byte sectors. */
export const sectorRound = (n: number): number => Math.ceil(n / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE

/**
 * Try to recover the master key from one key slot (spec §4.2 steps 1–4):
 * PBKDF2 the passphrase with the slot salt, decrypt the key material with the
 * volume's cipher (IVs from sector 0 at the material start), AF-merge, and
 * check PBKDF2(candidate, mk-digest-salt, mk-digest-iter) against mk-digest.
 * Returns the key, or undefined when the passphrase does not fit this slot.
 */
export const tryKeySlot = <E>(
  backend: CryptoBackend,
  header: LuksHeader,
  spec: CipherSpec,
  hash: HashName,
  slot: LuksKeySlot,
  read: LuksAreaReader<E>,
  passphrase: Uint8Array
): Effect.Effect<Uint8Array | undefined, E | CryptoError> =>
  Effect.gen(function* () {
    const materialLength = header.keyBytes * slot.stripes
    // QEMU decrypts exactly key-bytes × stripes; a short last sector decrypts
    // the same in every mode here, so read and decrypt whole sectors.
    const readLength = keyMaterialSectors(header.keyBytes, slot.stripes) * LUKS_SECTOR_SIZE
    const stored = yield* read(slot.keyMaterialOffset * LUKS_SECTOR_SIZE, readLength)
    if (stored.length < materialLength) {
      return yield* invalidLuksHeader(
        `key material of ${materialLength} bytes at sector ${slot.keyMaterialOffset} is truncated (${stored.length} bytes)`
      )
    }
    const slotKey = yield* pbkdf2(backend, hash, passphrase, slot.salt, slot.iterations, header.keyBytes)
    const material = new Uint8Array(readLength)
    material.set(stored.subarray(0, Math.min(stored.length, readLength)))
    const cipher = makeSectorCipher(backend, spec, slotKey)
    slotKey.fill(0)
    cipher.decrypt(0, material)
    cipher.dispose()
    const candidate = afMerge(backend.digest, hash, material, header.keyBytes, slot.stripes)
    material.fill(0)
    const digest = yield* pbkdf2(
      backend,
      hash,
      candidate,
      header.mkDigestSalt,
      header.mkDigestIterations,
      LUKS_DIGEST_SIZE
    )
    if (constantTimeEqual(digest, header.mkDigest)) return candidate
    candidate.fill(0)
    return undefined
  })

/**
 * Recover the master key of a decoded header with `passphrase` (UTF-8 bytes;
 * QEMU passes the secret as a C string, so a passphrase with a NUL byte cannot
 * match a QEMU-created slot). Tries the enabled slots in order.
 * Fails with a {@link CryptoError} of reason `BadPassphrase` when no slot accepts it.
 */
export const unlockLuksHeader = <E>(
  backend: CryptoBackend,
  header: LuksHeader,
  read: LuksAreaReader<E>,
  passphrase: Uint8Array
): Effect.Effect<
  { readonly masterKey: Uint8Array; readonly slot: number; readonly spec: CipherSpec; readonly hash: HashName },
  CryptoError | E
> =>
  Effect.gen(function* () {
    const algorithms = luksHeaderAlgorithms(header)
    if (algorithms instanceof CryptoError) return yield* algorithms
    const { spec, hash } = algorithms
    let tried = 0
    for (let i = 0; i < header.keySlots.length; i++) {
      const slot = header.keySlots[i]!
      if (!slot.active) continue
      tried++
      const key = yield* tryKeySlot(backend, header, spec, hash, slot, read, passphrase)
      if (key !== undefined) return { masterKey: key, slot: i, spec, hash }
    }
    return yield* badPassphrase(tried)
  })

/**
 * PBKDF2 iterations per second for this backend, measured the way QEMU's
 * `qcrypto_pbkdf2_count_iters` does (crypto/pbkdf.c): start at 2^15
 * iterations, multiply by 10 while a run takes under 100 ms, rescale to one
 * second while under 500 ms, then extrapolate. QEMU measures thread CPU time;
 * this uses the backend's CPU clock when it has one (node: process CPU time)
 * and wall-clock time (`performance.now()`) otherwise, as in browsers.
 */
export const measurePbkdf2 = (
  backend: CryptoBackend,
  hash: HashName,
  password: Uint8Array,
  salt: Uint8Array,
  outputLength: number
): Effect.Effect<number> =>
  Effect.promise(async () => {
    const clock = backend.cpuTimeMs ?? (() => performance.now())
    let iterations = 1 << 15
    for (;;) {
      const start = clock()
      const out = await backend.pbkdf2(hash, password, salt, iterations, outputLength)
      out.fill(0)
      const elapsed = clock() - start
      if (elapsed > 500 || iterations >= 0x1_0000_0000) return Math.floor((iterations * 1000) / Math.max(elapsed, 1))
      iterations = elapsed < 100 ? iterations * 10 : Math.floor((iterations * 1000) / elapsed)
    }
  })

/** Options for {@link createLuksArea}; names and defaults follow qemu-img's `encrypt.*` options. */
export interface CreateLuksOptions extends CipherSpecOptions {
  /** Passphrase for key slot 0 (strings are UTF-8 encoded). */
  readonly passphrase: Uint8Array | string
  /** PBKDF2/AF hash (`encrypt.hash-alg`), default `sha256`. */
  readonly hashAlg?: string | undefined
  /** Target PBKDF2 time in ms (`encrypt.iter-time`), default 2000. */
  readonly iterTimeMs?: number | undefined
  /** Fixed key-slot PBKDF2 iterations instead of measuring (tests, reproducible builds). */
  readonly slotIterations?: number | undefined
  /** Fixed master-key digest iterations instead of measuring. */
  readonly masterKeyIterations?: number | undefined
  /** UUID text (default: random version 4 UUID). */
  readonly uuid?: string | undefined
  /** Master key to store (default: random). Must be key-bytes long. */
  readonly masterKey?: Uint8Array | undefined
}

/** Default `iter-time` of QEMU (QCRYPTO_BLOCK_LUKS_DEFAULT_ITER_TIME_MS). */
export const DEFAULT_ITER_TIME_MS = 2000

const randomUuid = (backend: CryptoBackend): string => {
  const b = backend.randomBytes(16)
  b[6] = (b[6]! & 0x0f) | 0x40
  b[8] = (b[8]! & 0x3f) | 0x80
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const textEncoder = new TextEncoder()

/** Passphrase bytes: strings are UTF-8 encoded, byte arrays copied. */
export const passphraseBytes = (passphrase: Uint8Array | string): Uint8Array =>
  typeof passphrase === "string" ? textEncoder.encode(passphrase) : Uint8Array.from(passphrase)

const checkIterations = (n: number, name: string): CryptoError | undefined =>
  Number.isInteger(n) && n >= 1 && n <= 0xffffffff ? undefined : invalidArgument(`${name} ${n} must be an integer in 1..2^32-1`)

/** Iterations for a target time: QEMU scales per-second counts by iter-time/1000 (integer arithmetic). */
export const scaleIterations = (perSecond: number, iterTimeMs: number, divisor: number): number =>
  Math.max(Math.floor(Math.floor((perSecond * iterTimeMs) / 1000) / divisor), LUKS_MIN_ITERATIONS)

/**
 * Create a LUKS1 area the way QEMU does for qcow2 (crypto/block-luks.c
 * `qcrypto_block_luks_create`): random master key and salts; master-key digest
 * iterations = (per-second count × iter-time / 1000) / 8 and slot iterations =
 * per-second count × iter-time / 1000, each at least 1000; key slot 0 enabled
 * with 4000 AF stripes, slots 1–7 disabled (zero iterations and salt) but with
 * their key-material offsets set; layout from {@link luksLayout}.
 *
 * Returns the whole area (`payloadOffset × 512` bytes: header, padding, key
 * material, zeros), which qcow2 stores at the FDE extension offset with the
 * extension length equal to `area.length`, and the master key (caller zeroes it).
 */
export const createLuksArea = (
  backend: CryptoBackend,
  options: CreateLuksOptions
): Effect.Effect<
  { readonly area: Uint8Array; readonly header: LuksHeader; readonly masterKey: Uint8Array; readonly spec: CipherSpec },
  CryptoError
> =>
  Effect.gen(function* () {
    const spec = specFromOptions(options)
    if (spec instanceof CryptoError) return yield* spec
    const hashName = options.hashAlg ?? "sha256"
    if (!isHashName(hashName)) {
      return yield* unsupportedCipher(specCipherName(spec), specCipherMode(spec), `unknown hash ${hashName}`, hashName)
    }
    const hash: HashName = hashName
    const iterTimeMs = options.iterTimeMs ?? DEFAULT_ITER_TIME_MS
    if (!Number.isInteger(iterTimeMs) || iterTimeMs < 1) {
      return yield* invalidArgument(`iter-time ${iterTimeMs} must be a positive integer (ms)`)
    }
    for (const [n, name] of [
      [options.slotIterations, "slot iterations"],
      [options.masterKeyIterations, "master key iterations"]
    ] as const) {
      const bad = n === undefined ? undefined : checkIterations(n, name)
      if (bad) return yield* bad
    }
    const keyBytes = specKeyBytes(spec)
    if (options.masterKey !== undefined && options.masterKey.length !== keyBytes) {
      return yield* invalidArgument(
        `master key must be ${keyBytes} bytes for ${specCipherMode(spec)}, got ${options.masterKey.length}`
      )
    }
    const uuid = options.uuid ?? randomUuid(backend)
    const passphrase = passphraseBytes(options.passphrase)
    const masterKey = options.masterKey === undefined ? backend.randomBytes(keyBytes) : Uint8Array.from(options.masterKey)
    const mkDigestSalt = backend.randomBytes(LUKS_SALT_SIZE)

    const mkDigestIterations =
      options.masterKeyIterations ??
      scaleIterations(yield* measurePbkdf2(backend, hash, masterKey, mkDigestSalt, LUKS_DIGEST_SIZE), iterTimeMs, 8)
    const mkDigest = yield* pbkdf2(backend, hash, masterKey, mkDigestSalt, mkDigestIterations, LUKS_DIGEST_SIZE)

    const slotSalt = backend.randomBytes(LUKS_SALT_SIZE)
    const slotIterations =
      options.slotIterations ??
      scaleIterations(yield* measurePbkdf2(backend, hash, passphrase, slotSalt, keyBytes), iterTimeMs, 1)
    for (const [n, name] of [
      [slotIterations, "slot iterations"],
      [mkDigestIterations, "master key iterations"]
    ] as const) {
      const bad = checkIterations(n, name)
      if (bad) return yield* bad
    }

    const layout = luksLayout(keyBytes, LUKS_STRIPES)
    const keySlots: Array<LuksKeySlot> = layout.keyMaterialOffsets.map((offset, i) => ({
      active: i === 0,
      iterations: i === 0 ? slotIterations : 0,
      salt: i === 0 ? slotSalt : new Uint8Array(LUKS_SALT_SIZE),
      keyMaterialOffset: offset,
      stripes: LUKS_STRIPES
    }))
    const header: LuksHeader = {
      version: LUKS_VERSION,
      cipherName: specCipherName(spec),
      cipherMode: specCipherMode(spec),
      hashSpec: hash,
      payloadOffset: layout.payloadOffset,
      keyBytes,
      mkDigest,
      mkDigestSalt,
      mkDigestIterations,
      uuid,
      keySlots
    }
    const headerBytes = yield* Effect.try({
      try: () => encodeLuksHeader(header),
      catch: (e) => (e instanceof CryptoError ? e : invalidLuksHeader(String(e)))
    })

    const slotKey = yield* pbkdf2(backend, hash, passphrase, slotSalt, slotIterations, keyBytes)
    passphrase.fill(0)
    const splitLength = keyBytes * LUKS_STRIPES
    const split = afSplit(backend.digest, hash, masterKey, LUKS_STRIPES, backend.randomBytes)
    const material = new Uint8Array(sectorRound(splitLength))
    material.set(split)
    split.fill(0)
    const slotCipher = makeSectorCipher(backend, spec, slotKey)
    slotKey.fill(0)
    slotCipher.encrypt(0, material)
    slotCipher.dispose()

    const area = new Uint8Array(layout.payloadOffset * LUKS_SECTOR_SIZE)
    area.set(headerBytes, 0)
    // QEMU writes exactly key-bytes × stripes bytes; the rest of the last sector stays zero.
    area.set(material.subarray(0, splitLength), layout.keyMaterialOffsets[0]! * LUKS_SECTOR_SIZE)
    material.fill(0)
    return { area, header, masterKey, spec }
  })
