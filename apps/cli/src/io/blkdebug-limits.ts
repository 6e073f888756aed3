/**
 * A blkdebug node over the image with request limits (`driver=blkdebug,
 * image.driver=qcow2,align=…,max-transfer=…,opt-write-zero=…,
 * max-write-zero=…`): write-zeroes requests are cut as QEMU's block layer
 * cuts them for that node (bdrv_co_do_pwrite_zeroes: an unaligned head up
 * to the alignment, the aligned bulk in pieces of at most max-write-zero,
 * the unaligned tail), and pieces shorter than the alignment are refused by
 * blkdebug (to exercise the fallback), so they are written as zero data.
 * The layout of the image after such writes is QEMU's.
 */
import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import type { BlkdebugLimits } from "../qemu-filename.js"

/** QEMU's MAX_BOUNCE_BUFFER: the fallback writes zeros at most this much at a time. */
const MAX_BOUNCE_BUFFER = 16 * 1024 * 1024

/** `image` as seen through a blkdebug node with `limits`. */
export const withBlkdebugLimits = (image: Image, limits: BlkdebugLimits): Image => {
  const alignment = Math.max(1, limits.optWriteZero, limits.align)
  const maxTransfer = limits.maxTransfer > 0 ? Math.min(limits.maxTransfer, MAX_BOUNCE_BUFFER) : MAX_BOUNCE_BUFFER
  const maxWriteZero = limits.maxWriteZero > 0 ? Math.max(alignment, Math.floor(limits.maxWriteZero / alignment) * alignment) : Number.MAX_SAFE_INTEGER
  const writeZeroes = (offset: number, length: number, options?: { readonly unmap?: boolean }): Effect.Effect<void, ImageError> =>
    Effect.gen(function* () {
      let head = offset % alignment
      const tail = (offset + length) % alignment
      let zeros: Uint8Array | undefined
      while (length > 0) {
        let piece = length
        if (head !== 0) {
          piece = Math.min(length, maxTransfer, alignment - head)
          head = (head + piece) % alignment
        } else if (tail !== 0 && piece > alignment) {
          piece -= tail
        }
        piece = Math.min(piece, maxWriteZero)
        if (piece >= alignment) {
          yield* image.writeZeroes(offset, piece, options)
        } else {
          // blkdebug refuses it (ENOTSUP): the block layer writes a buffer of zeros instead.
          piece = Math.min(piece, maxTransfer)
          zeros ??= new Uint8Array(Math.min(maxTransfer, alignment))
          yield* image.write(offset, zeros.subarray(0, piece))
        }
        offset += piece
        length -= piece
      }
    })
  const wrapped: Image = Object.create(image)
  return Object.assign(wrapped, { writeZeroes })
}
