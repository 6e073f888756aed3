export { CryptoError, type CryptoErrorReason } from "./errors.js"
export * from "./spec.js"
export type { AesEngine, CryptoBackend } from "./backend.js"
export { SECTOR_SIZE, makeSectorCipher, type SectorCipher } from "./modes.js"
export { afMerge, afSplit, diffuse, type DigestFn } from "./af.js"
export * from "./luks-header.js"
export {
  createLuksArea,
  DEFAULT_ITER_TIME_MS,
  luksHeaderAlgorithms,
  measurePbkdf2,
  passphraseBytes,
  unlockLuksHeader,
  type CreateLuksOptions,
  type LuksAreaReader
} from "./luks.js"
export { portableBackend } from "./portable.js"
export {
  layerPortable,
  legacyAesKey,
  makeSectorCipherFactory,
  parseLuksHeader,
  SectorCipherFactory,
  type CreatedLuks,
  type LuksVolume,
  type SectorCipherFactoryShape
} from "./service.js"
