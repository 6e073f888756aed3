import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { FileLocks, nodeStorageOpener } from "@qcow2/storage-node"
import { StorageError as StorageErrorClass, type StorageError } from "@qcow2/storage"
import { ClusterCodec, type ClusterCodecShape } from "@qcow2/compress"
import { SectorCipherFactory } from "@qcow2/crypto"
import { ImageError, lockRequest, openImage, type FileRole, type Image, type ImageFormat, type OpenOptions } from "@qcow2/image"
import { isUrl } from "./names.js"
import { isNbdFilename, parseNbdName } from "@qcow2/nbd/client"
import { eprint } from "./output.js"
import { makeBlkdebugStorage } from "@qcow2/storage/blkdebug"
import { openNode, type FileNode } from "./file-node.js"
import { isNullCoName } from "./null-node.js"
import { quorumTopImage } from "./quorum-node.js"
import { compressFilter, compressRefusal } from "./compress-filter.js"
import { checkBackingOptions, parseOptionString, plainFileOf, resolveImageSpec, type ImageSpec } from "./qemu-filename.js"
import { openFailure, type CliFailure } from "./errors.js"

/** Services every image command needs. */
export type ImageEnv = StorageOpener | ClusterCodec

/**
 * One StorageOpener for both kinds of names: http(s) URLs go to the HTTP
 * backend, everything else to node:fs. Backing names resolve against the
 * image that names them (URL-relative or directory-relative).
 */
/**
 * Files opened with cache mode "unsafe" (qemu-img's -t unsafe, convert's
 * default): their flushes are skipped, trading durability for speed.
 */
export const unsafeCacheFiles = new Set<string>()

export const makeOpener = (http: Effect.Effect<StorageOpenerShape>): StorageOpenerShape => {
  const opener: StorageOpenerShape = {
    open: (name, options) => {
      if (parseNbdName(name) !== undefined) return Effect.flatMap(nbdOpener, (nbd) => nbd.open(name, options))
      if (name.startsWith("json:")) return openJsonName(opener, name, options)
      // The file protocol named explicitly, as QEMU's path_combine keeps it on backing names.
      if (name.startsWith("file:")) return opener.open(name.slice("file:".length), options)
      const opened = isUrl(name) ? Effect.flatMap(http, (h) => h.open(name, options)) : nodeStorageOpener.open(name, options)
      return unsafeCacheFiles.has(name) ? Effect.map(opened, (s) => ({ ...s, flush: () => Effect.void })) : opened
    },
    resolve: (from, name) => {
      // A json: name stands for itself wherever it is found (QEMU does not combine it with a directory).
      if (isUrl(name) || name.startsWith("json:") || isNbdFilename(name)) return name
      return isUrl(from) ? resolveUrl(from, name) : nodeStorageOpener.resolve(from, name)
    }
  }
  return opener
}

/**
 * The file a `json:{…}` name found inside an image (a backing file name)
 * stands for, under a blkdebug filter when its file node is one; its
 * format options are the image's concern, not the store's.
 */
const openJsonName = (opener: StorageOpenerShape, name: string, options: Parameters<StorageOpenerShape["open"]>[1]) => {
  const resolved = resolveImageSpec(name, new Map(), undefined)
  if (!resolved.ok) return Effect.fail(new StorageErrorClass({ reason: "Unsupported", message: resolved.message, location: name }))
  const { file, blkdebug } = resolved.spec
  // A name that stands for a node of its own (a quorum) is no file: opening it as one would loop.
  if (file === name) return Effect.fail(new StorageErrorClass({ reason: "Unsupported", message: `${name} names no file`, location: name }))
  const opened = opener.open(file, options)
  return blkdebug === undefined ? opened : Effect.map(opened, (storage) => makeBlkdebugStorage(storage, blkdebug))
}

/** A backing name found in an image opened by URL, resolved against that URL (as HttpStorageOpener.resolve does). */
const resolveUrl = (from: string, name: string): string => {
  try {
    return new URL(name, from).href
  } catch {
    return name
  }
}

/** Loads once, on first use, and keeps the result (a module the process may never need). */
const once = <A>(load: () => Promise<A>): Effect.Effect<A> => {
  let loaded: Promise<A> | undefined
  return Effect.promise(() => (loaded ??= load()))
}

/** The HTTP backend, loaded with the first URL. */
const httpOpener = once(() => import("@qcow2/storage-http").then((m) => m.HttpStorageOpener.make()))

/** The NBD client, loaded with the first NBD name. */
const nbdOpener = once(() => import("@qcow2/nbd/node").then((m) => m.makeNbdStorageOpener()))

/**
 * The Node codec, built on the first compressed cluster instead of at
 * start-up: its module (a separate chunk with node:zlib and the embedded
 * zstd wasm, compiled by the first zstd cluster) is something `info`, `map`,
 * `check` and uncompressed images never need.
 */
export const lazyCodec = (build: Effect.Effect<ClusterCodecShape>): ClusterCodecShape => {
  let real: ClusterCodecShape | undefined
  const get = Effect.suspend(() => (real !== undefined ? Effect.succeed(real) : build.pipe(Effect.tap((c) => Effect.sync(() => void (real = c))))))
  return {
    decompress: (type, input, out) => Effect.flatMap(get, (c) => c.decompress(type, input, out)),
    compress: (type, input, options) => Effect.flatMap(get, (c) => c.compress(type, input, options))
  }
}

/** Everything the commands use. The codec module (zstd wasm, node:zlib) loads with the first compressed cluster. */
export const envLayer: Layer.Layer<ImageEnv> = Layer.mergeAll(
  Layer.succeed(StorageOpener, makeOpener(httpOpener)),
  Layer.succeed(
    ClusterCodec,
    lazyCodec(Effect.flatMap(once(() => import("@qcow2/compress/node")), (m) => m.NodeClusterCodec.make))
  )
)

/**
 * The cipher factory (node:crypto), which the driver picks up when it opens
 * or creates an encrypted image with a passphrase. Only command lines that
 * carry secrets (--object, --passphrase-file) load it.
 */
export const cipherLayer: Layer.Layer<SectorCipherFactory> = Layer.unwrap(
  Effect.map(once(() => import("@qcow2/crypto/node")), (m) => m.layerNode)
)

/**
 * `--image-opts`: image names are option lists
 * (`driver=qcow2,file.filename=PATH,encrypt.key-secret=ID`), as qemu-img
 * takes them. Set once from the command line.
 */
export const imageOptions: { enabled: boolean; secrets: ReadonlyMap<string, Uint8Array> } = { enabled: false, secrets: new Map() }

/** What `-f` may name: the image formats, and QEMU's null-co device (whose only name is `null-co://`). */
export type CliFormat = ImageFormat | "null-co"

/** Open options as the command line gives them (`-f null-co` included). */
export type CliOpenOptions = Omit<OpenOptions, "format"> & { readonly format?: CliFormat }

/**
 * What an image name on the command line opens: an --image-opts string
 * when that mode is on, QEMU's `json:{…}` and `file:PATH` names
 * (qemu-filename.ts), else a path; the options merged with what the name
 * says (format, passphrase, no backing). A message when the name is bad.
 */
export const resolveNamed = (
  name: string,
  given: CliOpenOptions
): ({ readonly file: string; readonly options: OpenOptions; readonly spec?: ImageSpec } & Omit<FileNode, "file">) | { readonly error: string } => {
  const { format: formatFlag, ...rest } = given
  const options: OpenOptions = { report: driverReport, ...rest, ...(formatFlag !== undefined && formatFlag !== "null-co" ? { format: formatFlag } : {}) }
  const plain = formatFlag !== "null-co" && !imageOptions.enabled && !name.startsWith("json:") && !name.startsWith("file:") && !name.startsWith("blkdebug:") && !isNullCoName(name)
  if (plain) return { file: name, options }
  const resolved = imageOptions.enabled ? resolveImageSpec(undefined, parseOptionString(name), formatFlag) : resolveImageSpec(name, new Map(), formatFlag)
  if (!resolved.ok) return { error: resolved.message }
  const spec = resolved.spec
  const passphrase = spec.keySecret !== undefined ? imageOptions.secrets.get(spec.keySecret) : undefined
  // A metadata-only open (BDRV_O_NO_IO) never looks the secret up.
  if (spec.keySecret !== undefined && passphrase === undefined && options.noIo !== true) return { error: `No secret with id '${spec.keySecret}'` }
  const backingPassphrase = spec.backingKeySecret !== undefined ? imageOptions.secrets.get(spec.backingKeySecret) : undefined
  if (spec.backingKeySecret !== undefined && backingPassphrase === undefined) return { error: `No secret with id '${spec.backingKeySecret}'` }
  const backingFormat = spec.backingFormat
  return {
    file: spec.file,
    options: {
      ...options,
      ...(spec.format !== undefined ? { format: spec.format } : {}),
      ...(passphrase !== undefined ? { passphrase } : {}),
      ...(spec.noBacking ? { openBacking: false } : {}),
      ...(backingFormat === "qcow2" || backingFormat === "raw" || backingFormat === "luks" ? { backingFormat } : {}),
      ...(backingPassphrase !== undefined ? { backingPassphrase } : {})
    },
    spec,
    ...(spec.blkdebug !== undefined ? { blkdebug: spec.blkdebug } : {}),
    ...(spec.fileFormat !== undefined ? { fileFormat: spec.fileFormat } : {}),
    ...(spec.dataFile !== undefined ? { dataFile: spec.dataFile } : {}),
    ...(spec.nullDevice !== undefined ? { nullDevice: spec.nullDevice } : {}),
    ...(spec.quorum !== undefined ? { quorum: spec.quorum } : {})
  }
}

/** The driver's own messages (QEMU's qcow2 driver prints them on stderr as they are). */
export const driverReport = (line: string): void => eprint(`${line}\n`)

/**
 * The name QEMU gives the file a command-line name opens (its refreshed
 * filename): the name itself when it is a path, the file a json:, file: or
 * option name opens (./NAME when that would read as a protocol). Backing
 * names resolve against it, and `map` shows it as the file holding data.
 */
export const fileNameOf = (name: string): string => {
  const plain = plainFileOf(name, imageOptions.enabled)
  if (plain !== undefined) return plain
  const resolved = resolveNamed(name, {})
  return "error" in resolved ? name : resolved.file
}

/**
 * Opens an image named on the command line (see resolveNamed); the failure
 * is the driver's, with the file name it is about.
 */
export const openNamed = (
  name: string,
  options: CliOpenOptions
): Effect.Effect<{ readonly image: Image; readonly file: string }, { readonly error: ImageError; readonly file: string }, Scope.Scope | ImageEnv> => {
  const resolved = resolveNamed(name, options)
  if ("error" in resolved) return Effect.fail({ error: new ImageError({ reason: "InvalidArgument", message: resolved.error }), file: name })
  const file = resolved.file
  const opening = openImage(file, resolved.options)
  return openNode(resolved, resolved.options.readOnly ?? false, unsafeCacheFiles.has(name) ? withoutFlushes(file, opening) : opening).pipe(
    // Backing options must name the backing file the image has (this toolkit cannot substitute another).
    Effect.flatMap((image) => {
      const mismatch = resolved.spec !== undefined ? checkBackingOptions(resolved.spec, image) : undefined
      if (mismatch !== undefined) return Effect.fail(new ImageError({ reason: "Unsupported", message: mismatch, location: file }))
      if (resolved.spec?.quorumTop === true) return Effect.succeed(quorumTopImage(image))
      if (resolved.spec?.compressFilter !== true) return Effect.succeed(image)
      // QEMU's compress filter on top: every write goes down compressed.
      const refusal = compressRefusal(resolved.spec.protocol ?? image.format)
      return refusal === undefined ? Effect.succeed(compressFilter(image)) : Effect.fail(new ImageError({ reason: "Unsupported", message: refusal, location: file }))
    }),
    Effect.map((image) => ({ image, file })),
    // A quorum file or an NBD node has no name of its own here: failures name the image as given.
    Effect.mapError((error) => ({ error, file: resolved.spec?.quorum !== undefined || parseNbdName(file) !== undefined ? name : file }))
  )
}

/**
 * `open` with flushes of `file` skipped above every filter the name put on
 * it (cache mode unsafe: QEMU's BDRV_O_NO_FLUSH keeps a flush from reaching
 * any node of the image, a blkdebug filter's rules included).
 */
const withoutFlushes = <A, E, R>(file: string, open: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | StorageOpener> =>
  Effect.gen(function* () {
    const inner = yield* StorageOpener
    return yield* Effect.provideService(open, StorageOpener, {
      open: (name, options) => (name === file ? Effect.map(inner.open(name, options), (s) => ({ ...s, flush: () => Effect.void })) : inner.open(name, options)),
      resolve: inner.resolve
    })
  })

/** Opens an image, turning a failure into qemu-img's "Could not open" message. */
export const open = (name: string, options: CliOpenOptions, exitCode = 1): Effect.Effect<Image, CliFailure, Scope.Scope | ImageEnv> =>
  openNamed(name, options).pipe(
    Effect.map(({ image }) => image),
    Effect.mapError(({ error, file }) => openFailure(file, error, exitCode))
  )

/**
 * Takes the locks QEMU holds on a file in `role` (read-write) on a
 * descriptor the CLI opened itself (raw targets of create and convert), so
 * that a file another process holds is refused before it is truncated.
 * The refusal, if any; the locks go when the descriptor closes.
 */
export const lockDescriptor = (fd: number, file: string, role: FileRole): Effect.Effect<StorageError | undefined> =>
  Effect.promise(() => new FileLocks(fd, file).apply(lockRequest(role, false, false)))
