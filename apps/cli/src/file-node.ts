/**
 * What sits between an image's format and its file when a name says so
 * (qemu-filename.ts): QEMU's blkdebug filter (the file comes back as a
 * blkdebug store with the rules), or another image (a format node over a
 * format node: the file's bytes are that image's guest content). The
 * StorageOpener in force is wrapped so that the image file, and only it,
 * opens that way; backing and data files open as they are.
 */
import { Effect } from "effect"
import { ClusterCodec, type ClusterCodecShape } from "@qcow2/compress"
import { makeNullImage, openImage, type Image, type ImageError, type ImageFormat } from "@qcow2/image"
import { StorageError, StorageOpener, type BlockStorageShape, type StorageOpenerShape } from "@qcow2/storage"
import { makeBlkdebugStorage, type BlkdebugConfig } from "@qcow2/storage/blkdebug"
import type { NullDevice } from "./null-node.js"
import { QUORUM_NO_DIRECTORY, quorumStorage, type QuorumChild, type QuorumNode } from "./quorum-node.js"

/** How the image file of a name is opened. */
export interface FileNode {
  readonly file: string
  readonly blkdebug?: BlkdebugConfig
  readonly fileFormat?: ImageFormat
  readonly dataFile?: { readonly file: string; readonly blkdebug?: BlkdebugConfig }
  /** The file is a quorum of these children (quorum-node.ts); `file` is the quorum node's name. */
  readonly quorum?: QuorumNode
  /** The name is QEMU's null-co device, not a file (qemu-filename.ts). */
  readonly nullDevice?: NullDevice
}

/** `inner`, except that `file` opens under a blkdebug filter with `config`. */
export const blkdebugOpener = (inner: StorageOpenerShape, file: string, config: BlkdebugConfig): StorageOpenerShape => ({
  open: (name, options) => (name === file ? Effect.map(inner.open(name, options), (storage) => makeBlkdebugStorage(storage, config)) : inner.open(name, options)),
  resolve: inner.resolve
})

const asStorageError = (location: string) => (e: ImageError) =>
  new StorageError({ reason: "Io", message: e.message, location, ...(e.errno !== undefined ? { errno: e.errno } : {}), cause: e })

/**
 * An open image as the byte store of another format node: its guest bytes,
 * zeros past its end when read; writes stay inside it (a format node's
 * size changes only by truncate).
 */
export const imageStorage = (image: Image): BlockStorageShape => {
  const location = image.location
  const mapError = asStorageError(location)
  const outside = (offset: number, length: number) =>
    Effect.fail(new StorageError({ reason: "OutOfRange", message: `${location}: ${length} bytes at ${offset} pass the end of the image (${image.virtualSize})`, location, offset, length }))
  return {
    location,
    capabilities: { readOnly: image.readOnly, discard: false, alignment: 1 },
    read: (offset, into) => {
      const inside = Math.max(0, Math.min(into.length, image.virtualSize - offset))
      if (inside < into.length) into.fill(0, inside)
      return inside === 0 ? Effect.void : Effect.mapError(image.read(offset, into.subarray(0, inside)), mapError)
    },
    write: (offset, data) => (offset + data.length > image.virtualSize ? outside(offset, data.length) : Effect.mapError(image.write(offset, data), mapError)),
    flush: () => Effect.mapError(image.flush(), mapError),
    size: () => Effect.succeed(image.virtualSize),
    resize: (size) => Effect.mapError(image.truncate(size, { shrink: true }), mapError),
    discard: (offset, length) => Effect.mapError(image.discard(offset, length), mapError)
  }
}

/** The image `name` of `format`, opened through `inner`. */
const openNestedImage = (inner: StorageOpenerShape, codec: ClusterCodecShape, name: string, format: ImageFormat, readOnly: boolean) =>
  openImage(name, { format, readOnly }).pipe(Effect.provideService(StorageOpener, inner), Effect.provideService(ClusterCodec, codec), Effect.mapError(asStorageError(name)))

/** The image `name` of `format` (opened through `inner`) as a store: its guest bytes. */
const openNested = (inner: StorageOpenerShape, codec: ClusterCodecShape, name: string, format: ImageFormat, readOnly: boolean) =>
  Effect.map(openNestedImage(inner, codec, name, format, readOnly), imageStorage)

/** A quorum child that is an image: its guest bytes, with the image's block status (the quorum's status is its children's). */
const openQuorumChildImage = (inner: StorageOpenerShape, codec: ClusterCodecShape, name: string, format: ImageFormat, readOnly: boolean) =>
  Effect.map(
    openNestedImage(inner, codec, name, format, readOnly),
    (image): BlockStorageShape => ({
      ...imageStorage(image),
      blockStatus: (offset, length) =>
        Effect.mapBoth(image.blockStatus(offset, length), { onFailure: asStorageError(name), onSuccess: (s) => ({ length: s.length, data: s.data, zero: s.zero }) })
    })
  )

/** `inner`, except that `file` opens as the image it holds, of `format` (opened through `inner`). */
const nestedOpener = (inner: StorageOpenerShape, codec: ClusterCodecShape, file: string, format: ImageFormat): StorageOpenerShape => ({
  open: (name, options) => (name !== file ? inner.open(name, options) : openNested(inner, codec, name, format, options.readOnly)),
  resolve: inner.resolve
})

/** What a name relative to a quorum node resolves to: opening it fails as QEMU's bdrv_dirname does. */
const NO_DIRECTORY = "quorum-relative:"

/**
 * `inner`, except that `file` opens as a quorum of its children (files or
 * images, opened through `inner`), and names relative to it cannot be
 * resolved (a quorum node has no directory).
 */
const quorumOpener = (inner: StorageOpenerShape, codec: ClusterCodecShape, file: string, node: QuorumNode): StorageOpenerShape => ({
  open: (name, options) => {
    if (name.startsWith(NO_DIRECTORY)) return Effect.fail(new StorageError({ reason: "Unsupported", message: QUORUM_NO_DIRECTORY, location: name }))
    if (name !== file) return inner.open(name, options)
    const child = (c: QuorumChild) => (c.format !== undefined ? openQuorumChildImage(inner, codec, c.file, c.format, options.readOnly) : inner.open(c.file, options))
    return Effect.map(Effect.forEach(node.children, child), (children) => quorumStorage(file, node, children))
  },
  resolve: (from, name) => (from === file && !name.startsWith("/") && !/^[a-z0-9+.-]+:/i.test(name) ? NO_DIRECTORY + name : inner.resolve(from, name))
})

/** Runs `effect` (which opens `node.file`) with the file node the name asked for. */
export const withFileNode = <A, E, R>(node: FileNode, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | StorageOpener | ClusterCodec> =>
  Effect.gen(function* () {
    let opener = yield* StorageOpener
    if (node.fileFormat !== undefined) opener = nestedOpener(opener, yield* ClusterCodec, node.file, node.fileFormat)
    if (node.quorum !== undefined) opener = quorumOpener(opener, yield* ClusterCodec, node.file, node.quorum)
    if (node.blkdebug !== undefined) opener = blkdebugOpener(opener, node.file, node.blkdebug)
    const data = node.dataFile
    if (data?.blkdebug !== undefined) opener = blkdebugOpener(opener, data.file, data.blkdebug)
    return yield* Effect.provideService(effect, StorageOpener, opener)
  })

/**
 * Opens the image a name describes: QEMU's null-co device when the name is
 * one (no file to open), else `open` (which opens `node.file`) with the
 * file node the name asked for.
 */
export const openNode = <E, R>(node: FileNode, readOnly: boolean, open: Effect.Effect<Image, E, R>): Effect.Effect<Image, E, R | StorageOpener | ClusterCodec> =>
  node.nullDevice !== undefined ? Effect.succeed(makeNullImage({ ...node.nullDevice, readOnly })) : withFileNode(node, open)
