/**
 * qemu-io -C / `open -C`: copy-on-read. Before a read, every cluster it
 * touches that the top image does not hold (it reads from the backing chain,
 * or as unallocated zeros) is written into the top image, as QEMU's
 * bdrv_co_do_copy_on_readv does: whole clusters, zeros as zero clusters,
 * clusters the top image holds left as they are.
 */
import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import { isZeroRange } from "../commands/convert.js"

/** Bytes copied per request (QEMU's copy-on-read bounce buffer is at most 16 MiB as well). */
const BOUNCE = 16 * 1024 * 1024

/** Copies what `[offset, offset + length)` reads from below into `image`'s top layer, whole clusters. */
const copyUp = (image: Image, offset: number, length: number): Effect.Effect<void, ImageError> =>
  Effect.gen(function* () {
    if (length === 0) return
    const cluster = image.clusterSize > 0 ? image.clusterSize : 512
    const end = Math.min(image.virtualSize, Math.ceil((offset + length) / cluster) * cluster)
    let pos = Math.floor(offset / cluster) * cluster
    let buffer: Buffer | undefined
    while (pos < end) {
      const status = yield* image.blockStatus(pos, end - pos)
      const extentEnd = Math.min(end, pos + Math.max(1, status.length))
      if (!(status.depth === 0 && status.present)) {
        if (status.zero) yield* image.writeZeroes(pos, extentEnd - pos)
        else {
          for (let at = pos; at < extentEnd; at += BOUNCE) {
            const n = Math.min(BOUNCE, extentEnd - at)
            buffer ??= Buffer.allocUnsafe(Math.min(BOUNCE, end - pos))
            const view = buffer.subarray(0, n)
            yield* image.read(at, view)
            if (isZeroRange(view, 0, n)) yield* image.writeZeroes(at, n)
            else yield* image.write(at, view)
          }
        }
      }
      pos = extentEnd
    }
  })

/** `image` whose reads copy what they read from below into the top image first. */
export const copyOnRead = (image: Image): Image => {
  const wrapped: Image = Object.create(image)
  return Object.assign(wrapped, {
    read: (offset: number, into: Uint8Array) => Effect.flatMap(copyUp(image, offset, into.length), () => image.read(offset, into))
  })
}
