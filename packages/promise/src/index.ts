/**
 * The runtime-independent half of the Promise API (open/create/convert, the
 * image handle, the error classes), which `@qcow2/node` and
 * `@qcow2/browser` wire to their storage; most users import one of those.
 * A runtime supplies a {@link Platform} (its storage opener and a few
 * policies); the codec, ciphers and compression pool come from
 * `@qcow2/compress/runtime` and `@qcow2/crypto/runtime`, which resolve by
 * export condition (`browser` or not).
 */
export { openWith, type QcowImage } from "./image.js"
export { createWith } from "./create.js"
export { convertWith } from "./convert.js"
export { makeRunner, fromImageError, publicErrors, passphraseBytes, type Platform, type PromiseServices, type Runner } from "./runtime.js"
export type * from "./options.js"
export {
  AbortError,
  ImageClosedError,
  ImageError,
  NoSpaceError,
  Qcow2Error,
  WrongPassphraseError,
  type ImageErrorDetails,
  type ImageErrorReason
} from "./errors.js"
