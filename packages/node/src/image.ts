/** `open()` of the Node Promise API. */
import { openWith, type OpenOptions, type QcowImage } from "@qcow2/promise"
import { runner } from "./internal/runtime.js"

export type { QcowImage }

/**
 * Opens an image by path or http(s) URL (read-only over HTTP), probing
 * qcow2, LUKS and raw unless `format` says, with its backing chain.
 */
export function open(name: string, options: OpenOptions = {}): Promise<QcowImage> {
  return openWith(runner, name, options)
}
