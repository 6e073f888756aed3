/**
 * qemu-io -C / `open -C` / the copy-on-read filter: copy-on-read, as QEMU's
 * bdrv_co_do_copy_on_readv does it. A read walks the clusters it touches in
 * order: those the top image holds are read from it; the others (the
 * backing chain's, or unallocated zeros) are read whole, written into the
 * top image (zeros as zero clusters) and their part of the read taken from
 * what was read.
 */
import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import type { DebugEvent } from "@qcow2/storage"
import { isZeroRange } from "../commands/convert.js"

/** Bytes copied per request (QEMU's copy-on-read bounce buffer is at most 16 MiB as well). */
const BOUNCE = 16 * 1024 * 1024

/** Reads `into` at `offset`, copying what comes from below into `image`'s top layer, whole clusters. */
const readCopying = (image: Image, offset: number, into: Uint8Array, debugEvent: (event: DebugEvent) => void): Effect.Effect<void, ImageError> =>
  Effect.gen(function* () {
    const readEnd = offset + into.length
    if (into.length === 0) return yield* image.read(offset, into)
    const cluster = image.clusterSize > 0 ? image.clusterSize : 512
    const end = Math.min(image.virtualSize, Math.ceil(readEnd / cluster) * cluster)
    let pos = Math.floor(offset / cluster) * cluster
    let bounce: Buffer | undefined
    while (pos < end) {
      const status = yield* image.blockStatus(pos, end - pos)
      const extentEnd = Math.min(end, pos + Math.max(1, status.length))
      if (status.depth === 0 && status.present) {
        const from = Math.max(pos, offset)
        const to = Math.min(extentEnd, readEnd)
        if (to > from) yield* image.read(from, into.subarray(from - offset, to - offset))
      } else {
        for (let at = pos; at < extentEnd; at += BOUNCE) {
          const n = Math.min(BOUNCE, extentEnd - at)
          bounce ??= Buffer.allocUnsafe(Math.min(BOUNCE, end - pos))
          const view = bounce.subarray(0, n)
          yield* image.read(at, view)
          debugEvent("cor_write")
          if (isZeroRange(view, 0, n)) yield* image.writeZeroes(at, n)
          else yield* image.write(at, view)
          const from = Math.max(at, offset)
          const to = Math.min(at + n, readEnd)
          if (to > from) into.set(view.subarray(from - at, to - at), from - offset)
        }
      }
      pos = extentEnd
    }
  })

/**
 * `image` whose reads copy what they read from below into the top image;
 * `debugEvent` is told of each copy (QEMU raises cor_write on the node,
 * which a blkdebug node there sees).
 */
export const copyOnRead = (image: Image, debugEvent: (event: DebugEvent) => void = () => {}): Image => {
  const wrapped: Image = Object.create(image)
  return Object.assign(wrapped, {
    read: (offset: number, into: Uint8Array) => readCopying(image, offset, into, debugEvent)
  })
}
