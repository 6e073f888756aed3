import * as nodePath from "node:path"
import { Layer } from "effect"
import { StorageOpener } from "@qcow2/storage"
import type { StorageOpenerShape } from "@qcow2/storage"
import { openNodeFile } from "./NodeFileStorage.js"

/**
 * Resolves a backing file name the way QEMU does: relative names are taken
 * relative to the directory of the image that names them; absolute names
 * are kept. The result is an absolute path.
 */
export const resolveNodePath = (referencedFrom: string, name: string): string =>
  nodePath.isAbsolute(name) ? name : nodePath.resolve(nodePath.dirname(referencedFrom), name)

/** A {@link StorageOpenerShape} over the local filesystem. */
export const nodeStorageOpener: StorageOpenerShape = {
  open: openNodeFile,
  resolve: resolveNodePath
}

/** Layers providing {@link StorageOpener} over the local filesystem. */
export const NodeStorageOpener = {
  layer: Layer.succeed(StorageOpener, nodeStorageOpener)
} as const
