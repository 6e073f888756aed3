/** `convert()` of the Node Promise API (the copy loop is @qcow2/promise's). */
import { convertWith, type ConvertOptions } from "@qcow2/promise"
import { runner } from "./internal/runtime.js"

/**
 * Converts `source` (path or http(s) URL, any format this package opens)
 * into a new image at `target` (replaced if it exists), like
 * `qemu-img convert [-f FMT] [-O qcow2|raw] [-c] [-o …] SOURCE TARGET`;
 * `compress` uses a pool of worker threads. Aborting through `signal`
 * closes both images and rejects with AbortError; the target is left as
 * far as it got (consistent, since it is flushed and closed), as qemu-img
 * leaves it when interrupted.
 */
export function convert(source: string, target: string, options: ConvertOptions = {}): Promise<void> {
  return convertWith(runner, source, target, options)
}
