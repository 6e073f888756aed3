export { CryptoError, type CryptoErrorReason } from "./errors.js"
export * from "./spec.js"
export type { AesEngine, CryptoBackend } from "./backend.js"
export { makeSectorCipher, type SectorCipher } from "./modes.js"
export { afMerge, afSplit, diffuse, type DigestFn } from "./af.js"
export * from "./luks-header.js"
export {
  createLuksArea,
  measurePbkdf2,
  passphraseBytes,
  unlockLuksHeader,
  type CreateLuksOptions,
  type LuksAreaReader
} from "./luks.js"
export {
  amendLuksKeySlots,
  type LuksAreaAccess,
  type LuksKeySlotAmendment,
  type LuksSecretLookup
} from "./luks-amend.js"
export { portableBackend } from "./portable.js"
export {
  layerPortable,
  makeSectorCipherFactory,
  SectorCipherFactory,
  type CreatedLuks,
  type LuksVolume,
  type SectorCipherFactoryShape
} from "./service.js"
