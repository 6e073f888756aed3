/**
 * StorageOpener for URLs: opens images and their backing files over HTTP,
 * read-only. A backing file name found in an image resolves against the
 * URL of the image that names it, the way QEMU resolves it against the
 * overlay's directory (qcow2.txt, "backing_file_offset").
 */
import { StorageError, StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { Effect, Layer } from "effect"
import { openHttp } from "./HttpStorage.js"
import type { HttpStorageOptions } from "./options.js"

/** Resolves `name` relative to the URL `referencedFrom` (an absolute `name` wins). */
export const resolve = (referencedFrom: string, name: string): string => {
  try {
    return new URL(name, referencedFrom).href
  } catch {
    return name
  }
}

/** The opener itself; every store it opens gets its own cache and counters. */
export const make = (options: HttpStorageOptions = {}): StorageOpenerShape => ({
  open: (name, openOptions) =>
    openOptions.readOnly && openOptions.create !== true && openOptions.truncate !== true
      ? openHttp(name, options)
      : Effect.fail(
          new StorageError({
            reason: "ReadOnly",
            message: `cannot open ${name} for writing${openOptions.create === true ? " or create it" : ""}: HTTP storage is read-only`,
            location: name
          })
        ),
  resolve
})

/** A Layer providing StorageOpener for http(s) URLs. */
export const layer = (options?: HttpStorageOptions): Layer.Layer<StorageOpener> =>
  Layer.succeed(StorageOpener, make(options))
