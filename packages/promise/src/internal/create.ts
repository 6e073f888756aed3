/**
 * The create step shared by `create` and `convert`: option names of the
 * Promise API mapped onto the Effect API's.
 */
import { Effect } from "effect"
import { createImage, createLuksImage, ImageError as EffectImageError, type CreateOptions as DriverCreateOptions } from "@qcow2/image"
import { StorageOpener } from "@qcow2/storage"
import type { CreateOptions, LuksOptions, Qcow2CreateOptions, RawCreateOptions } from "../options.js"
import { passphraseBytes } from "../runtime.js"
import { outputFormat } from "./arguments.js"

const invalid = (location: string, message: string) => new EffectImageError({ reason: "InvalidArgument", message, location })

/** qemu-img creates the image rounded up to whole 512-byte sectors. */
const sectorSize = (location: string, size: number | undefined): Effect.Effect<number | undefined, EffectImageError> => {
  if (size === undefined) return Effect.succeed(undefined)
  if (!Number.isSafeInteger(size) || size < 0) return Effect.fail(invalid(location, `Invalid image size specified: ${size}`))
  return Effect.succeed(Math.ceil(size / 512) * 512)
}

const luksFields = (o: LuksOptions) => ({
  passphrase: passphraseBytes(o.passphrase),
  ...(o.cipherAlg !== undefined ? { cipherAlg: o.cipherAlg } : {}),
  ...(o.cipherMode !== undefined ? { cipherMode: o.cipherMode } : {}),
  ...(o.ivgenAlg !== undefined ? { ivgenAlg: o.ivgenAlg } : {}),
  ...(o.ivgenHashAlg !== undefined ? { ivgenHashAlg: o.ivgenHashAlg } : {}),
  ...(o.hashAlg !== undefined ? { hashAlg: o.hashAlg } : {}),
  ...(o.iterTime !== undefined ? { iterTimeMs: o.iterTime } : {}),
  ...(o.slotIterations !== undefined ? { slotIterations: o.slotIterations } : {}),
  ...(o.masterKeyIterations !== undefined ? { masterKeyIterations: o.masterKeyIterations } : {})
})

/** A raw file of `size` bytes: sparse, or written out as zeros with falloc/full (as QEMU's file driver does). */
export const createRaw = (path: string, size: number, preallocation: RawCreateOptions["preallocation"]) =>
  Effect.scoped(
    Effect.gen(function* () {
      const opener = yield* StorageOpener
      const storage = yield* opener.open(path, { readOnly: false, create: true, truncate: true })
      if (preallocation === "full" || preallocation === "falloc") {
        const zeros = new Uint8Array(Math.min(size, 1 << 20))
        for (let done = 0; done < size; done += zeros.length) yield* storage.write(done, zeros.subarray(0, Math.min(zeros.length, size - done)))
      }
      yield* storage.resize(size)
      yield* storage.flush()
    })
  ).pipe(Effect.mapError((e) => new EffectImageError({ reason: e.reason === "ReadOnly" ? "ReadOnly" : "Storage", message: `Could not create '${path}': ${e.message}`, location: path, ...(e.errno !== undefined ? { errno: e.errno } : {}), cause: e })))

const qcow2Options = (o: Qcow2CreateOptions, size: number | undefined): DriverCreateOptions => ({
  ...(size !== undefined ? { size } : {}),
  ...(o.clusterSize !== undefined ? { clusterSize: o.clusterSize } : {}),
  ...(o.compat !== undefined ? { compat: o.compat } : {}),
  ...(o.refcountBits !== undefined ? { refcountBits: o.refcountBits } : {}),
  ...(o.lazyRefcounts !== undefined ? { lazyRefcounts: o.lazyRefcounts } : {}),
  ...(o.extendedL2 !== undefined ? { extendedL2: o.extendedL2 } : {}),
  ...(o.compressionType !== undefined ? { compressionType: o.compressionType } : {}),
  ...(o.backingFile !== undefined ? { backingFile: o.backingFile } : {}),
  ...(o.backingFormat !== undefined ? { backingFormat: o.backingFormat } : {}),
  ...(o.dataFile !== undefined ? { dataFile: o.dataFile } : {}),
  ...(o.dataFileRaw !== undefined ? { dataFileRaw: o.dataFileRaw } : {}),
  ...(o.preallocation !== undefined ? { preallocation: o.preallocation } : {}),
  ...(o.encrypt !== undefined ? { encryption: { format: o.encrypt.format ?? "luks", ...luksFields(o.encrypt) } } : {})
})

/** The Effect that creates `path` as `options` say (used by `create` and `convert`). */
export const createEffect = (path: string, options: CreateOptions) =>
  Effect.gen(function* () {
    yield* outputFormat(path, options.format, ["qcow2", "raw", "luks"], (format) => `${path}: Unknown file format '${format}'`)
    const size = yield* sectorSize(path, options.size)
    switch (options.format) {
      case "raw":
        return yield* createRaw(path, size ?? 0, options.preallocation)
      case "luks":
        return yield* createLuksImage(path, { ...luksFields(options), size: size ?? 0, ...(options.preallocation !== undefined ? { preallocation: options.preallocation } : {}) })
      case undefined:
      case "qcow2":
        return yield* Effect.scoped(createImage(path, qcow2Options(options, size)))
    }
  })

