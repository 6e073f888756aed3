import * as nodePath from "node:path"
import { Layer } from "effect"
import { StorageOpener } from "@qcow2/storage"
import type { StorageOpenerShape } from "@qcow2/storage"
import { openNodeFile } from "./NodeFileStorage.js"

/**
 * Resolves a backing file name the way QEMU does: relative names are taken
 * relative to the directory of the image that names them; absolute names
 * are kept. The result is an absolute path, or, when the working directory
 * has no name the system can return (deeper than PATH_MAX: ERANGE, or
 * removed: ENOENT), the two joined as they are, relative to the working
 * directory, which the system still resolves (QEMU works there too).
 */
export const resolveNodePath = (referencedFrom: string, name: string): string => {
  if (nodePath.isAbsolute(name)) return name
  const joined = nodePath.join(nodePath.dirname(referencedFrom), name)
  if (nodePath.isAbsolute(joined)) return joined
  try {
    return nodePath.resolve(joined)
  } catch {
    return joined
  }
}

/** A {@link StorageOpenerShape} over the local filesystem. */
export const nodeStorageOpener: StorageOpenerShape = {
  open: openNodeFile,
  resolve: resolveNodePath
}

/** Layers providing {@link StorageOpener} over the local filesystem. */
export const NodeStorageOpener = {
  layer: Layer.succeed(StorageOpener, nodeStorageOpener)
} as const
