import { Effect } from "effect"
import type { Scope } from "effect"
import { ClusterCodec } from "@qcow2/compress"
import type { ClusterCodecShape } from "@qcow2/compress"
import { QCOW2_MAGIC } from "@qcow2/format"
import { StorageOpener } from "@qcow2/storage"
import type { BlockStorageShape, StorageOpenerShape } from "@qcow2/storage"
import type { CreateOptions, Image, ImageFormat, OpenOptions } from "./api.js"
import { planCreate, writeEmptyImage } from "./create.js"
import { ImageError } from "./errors.js"
import { asImageError, toImageError } from "./internal/errors.js"
import { checkQcow2 } from "./check/index.js"
import { openQcow2 } from "./qcow2/open.js"
import { makeRawImage } from "./raw.js"

/** Deepest backing chain accepted (QEMU has no fixed limit; this bounds hostile chains). */
export const MAX_BACKING_CHAIN_DEPTH = 64

const openFailure = (name: string, e: unknown): ImageError => {
  const inner = toImageError(e, name)
  return new ImageError({ reason: inner.reason, message: `Could not open '${name}': ${inner.message}`, location: name, cause: e })
}

/** Reads the magic to tell qcow2 from raw (QEMU's probe, limited to the two formats here). */
export function probeFormat(storage: BlockStorageShape): Effect.Effect<ImageFormat, ImageError> {
  return asImageError(
    Effect.gen(function* () {
      const size = yield* storage.size()
      if (size < 4) return "raw" as const
      const magic = new Uint8Array(4)
      yield* storage.read(0, magic)
      const value = ((magic[0] << 24) | (magic[1] << 16) | (magic[2] << 8) | magic[3]) >>> 0
      return value === QCOW2_MAGIC ? ("qcow2" as const) : ("raw" as const)
    }),
    storage.location
  )
}

interface ChainStep {
  readonly opener: StorageOpenerShape
  readonly codec: ClusterCodecShape
  readonly options: OpenOptions
}

function openNamed(
  step: ChainStep,
  name: string,
  format: ImageFormat | undefined,
  readOnly: boolean,
  seen: ReadonlyArray<string>
): Effect.Effect<Image, ImageError, Scope.Scope> {
  return Effect.gen(function* () {
    if (seen.includes(name)) {
      return yield* new ImageError({
        reason: "BackingChain",
        message: `Backing file loop: ${[...seen, name].join(" -> ")}`,
        location: name
      })
    }
    if (seen.length > MAX_BACKING_CHAIN_DEPTH) {
      return yield* new ImageError({
        reason: "BackingChain",
        message: `Backing chain is deeper than ${MAX_BACKING_CHAIN_DEPTH} images`,
        location: name
      })
    }
    const storage = yield* Effect.mapError(step.opener.open(name, { readOnly }), (e) => openFailure(name, e))
    const actual = format ?? (yield* probeFormat(storage))
    if (actual === "raw") return yield* makeRawImage(storage, readOnly)
    const chain = [...seen, name]
    return yield* openQcow2({
      storage,
      readOnly,
      options: step.options,
      codec: step.codec,
      resolveBacking: (backing) => step.opener.resolve(name, backing),
      openBacking: (backing, backingFormat) =>
        Effect.mapError(openNamed(step, step.opener.resolve(name, backing), backingFormat, true, chain), (e) =>
          e.reason === "BackingChain" ? e : new ImageError({ ...e, reason: "BackingChain", message: `Could not open backing file: ${e.message}` })
        ),
      // QEMU opens a relative data file name as given (relative to the working directory).
      openDataFile: (dataFile) => Effect.mapError(step.opener.open(dataFile, { readOnly }), (e) => openFailure(dataFile, e)),
      check: (repair) => checkQcow2(storage, repair === undefined ? {} : { repair })
    })
  })
}

/**
 * Opens an image (qcow2 or raw, probed unless `options.format` says) with
 * its backing chain, as a scoped resource: closing the scope flushes and
 * closes every file. Backing names are resolved against the image that
 * names them; loops and chains deeper than 64 are refused.
 */
export function openImage(name: string, options: OpenOptions = {}): Effect.Effect<Image, ImageError, Scope.Scope | StorageOpener | ClusterCodec> {
  return Effect.gen(function* () {
    const opener = yield* StorageOpener
    const codec = yield* ClusterCodec
    return yield* openNamed({ opener, codec, options }, name, options.format, options.readOnly ?? false, [])
  })
}

/**
 * Creates a qcow2 image the way `qemu-img create -f qcow2` does: an empty
 * image of size 0, grown to its size through the driver, then preallocated
 * as asked. The size defaults to the backing file's.
 */
export function createImage(name: string, options: CreateOptions): Effect.Effect<void, ImageError, Scope.Scope | StorageOpener | ClusterCodec> {
  return Effect.scoped(
    Effect.gen(function* () {
      const opener = yield* StorageOpener
      const codec = yield* ClusterCodec
      let size = options.size
      if (options.backingFile !== undefined && size === undefined) {
        const backingName = opener.resolve(name, options.backingFile)
        const backing = yield* Effect.scoped(
          openNamed({ opener, codec, options: {} }, backingName, options.backingFormat, true, [])
        ).pipe(Effect.map((image) => image.virtualSize))
        size = backing
      }
      if (size === undefined) return yield* new ImageError({ reason: "InvalidArgument", message: "Image creation needs a size parameter", location: name })
      const plan = yield* planCreate(options, size)
      const storage = yield* Effect.mapError(opener.open(name, { readOnly: false, create: true, truncate: true }), (e) => openFailure(name, e))
      if (plan.dataFile !== undefined) {
        const data = yield* Effect.mapError(opener.open(plan.dataFile, { readOnly: false, create: true, truncate: true }), (e) =>
          openFailure(plan.dataFile!, e)
        )
        if (plan.dataFileRaw || plan.preallocation !== "off") yield* asImageError(data.resize(plan.size), plan.dataFile)
      }
      yield* writeEmptyImage(storage, plan)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const image = yield* openNamed({ opener, codec, options: { openBacking: false } }, name, "qcow2", false, [])
          if (plan.size > 0) yield* image.truncate(plan.size, { preallocation: plan.preallocation })
          yield* image.flush()
        })
      )
    })
  )
}

export type { CreateOptions }
