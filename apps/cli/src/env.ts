import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { nodeStorageOpener } from "@qcow2/storage-node"
import { HttpStorageOpener } from "@qcow2/storage-http"
import { NodeClusterCodec } from "@qcow2/compress/node"
import type { ClusterCodec } from "@qcow2/compress"
import { openImage, type Image, type OpenOptions } from "@qcow2/image"
import { isUrl } from "./names.js"
import { openFailure, type CliFailure } from "./errors.js"

/** Services every image command needs. */
export type ImageEnv = StorageOpener | ClusterCodec

/**
 * One StorageOpener for both kinds of names: http(s) URLs go to the HTTP
 * backend, everything else to node:fs. Backing names resolve against the
 * image that names them (URL-relative or directory-relative).
 */
export const makeOpener = (http: StorageOpenerShape): StorageOpenerShape => ({
  open: (name, options) => (isUrl(name) ? http.open(name, options) : nodeStorageOpener.open(name, options)),
  resolve: (from, name) => {
    if (isUrl(name)) return name
    return isUrl(from) ? http.resolve(from, name) : nodeStorageOpener.resolve(from, name)
  }
})

export const envLayer: Layer.Layer<ImageEnv> = Layer.mergeAll(
  Layer.succeed(StorageOpener, makeOpener(HttpStorageOpener.make())),
  NodeClusterCodec.layer
)

/** Opens an image, turning a failure into qemu-img's "Could not open" message. */
export const open = (
  name: string,
  options: OpenOptions,
  exitCode = 1
): Effect.Effect<Image, CliFailure, Scope.Scope | ImageEnv> =>
  openImage(name, options).pipe(Effect.mapError((e) => openFailure(name, e, exitCode)))
