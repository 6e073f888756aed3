/**
 * The qcow2 toolkit for Node without Effect: `open`, `create` and `convert`
 * return Promises, with file and HTTP storage, the native codecs, a worker
 * pool for compression and node:crypto already wired in. The Effect API
 * (@qcow2/image) is the primary one; this is a thin facade over it, sharing
 * the image handle and errors with @qcow2/browser through @qcow2/promise.
 */
export { open, type QcowImage } from "./image.js"
export { create } from "./create.js"
export { convert } from "./convert.js"
export type {
  BlockStatus,
  CheckResult,
  ConvertOptions,
  ConvertProgress,
  CreateOptions,
  ImageFormat,
  ImageInfo,
  LuksCreateOptions,
  LuksOptions,
  MapEntry,
  OpenOptions,
  Qcow2CreateOptions,
  RawCreateOptions,
  ResizeOptions
} from "@qcow2/promise"
export {
  AbortError,
  ImageClosedError,
  ImageError,
  NoSpaceError,
  Qcow2Error,
  WrongPassphraseError,
  type ImageErrorDetails,
  type ImageErrorReason
} from "@qcow2/promise"
