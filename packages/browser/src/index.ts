/**
 * The qcow2 toolkit in the browser without Effect: `open`, `create` and
 * `convert` return Promises, with IndexedDB images (`idb://DATABASE/NAME`),
 * picked files (File/Blob, read only), http(s) URLs (Range requests, read
 * only), the portable codecs (pako, zstd wasm) with a Web Worker
 * compression pool, and the portable ciphers wired in. Backing files open
 * only as an {@link OpenPolicy} allows. The image handle and the error
 * classes are @qcow2/node's (both build on @qcow2/promise).
 */
export { open, create, type BrowserOpenOptions, type PolicyOptions } from "./open.js"
export { convert, type BrowserConvertOptions, type ExportProgress } from "./convert.js"
export { listImages, deleteImage, renameImage, storageEstimate, type StoredImage } from "./library.js"
export { OpenPolicy, kindOf, makeAppOpener, PICKED, type AppOpenerOptions, type NameKind } from "./opener.js"
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
  QcowImage,
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
