/**
 * A blkdebug node with rules over the image itself (`driver=blkdebug,
 * config=…,image.driver=qcow2`): its rules see the guest requests, and the
 * events QEMU's block layer raises on that node, which are the ones of the
 * requests it is given (cor_write, from copy-on-read on the node); the
 * format driver's own events go to the file below, not here.
 */
import { Effect } from "effect"
import { ImageError, type Image, type ImageErrorReason } from "@qcow2/image"
import type { DebugEvent, StorageError } from "@qcow2/storage"
import { makeBlkdebugRules, type BlkdebugConfig, type BlkdebugIoType } from "@qcow2/storage/blkdebug"

const reasonOf = (errno: string | undefined): ImageErrorReason => (errno === "ENOSPC" || errno === "EDQUOT" ? "NoSpace" : errno === "EROFS" ? "ReadOnly" : "Storage")

const asImageError = (e: StorageError, location: string): ImageError =>
  new ImageError({ reason: reasonOf(e.errno), message: e.message, location, ...(e.offset !== undefined ? { offset: e.offset } : {}), ...(e.errno !== undefined ? { errno: e.errno } : {}), cause: e })

/** `image` under a blkdebug node with `config`'s rules, and the node's event entry (for copy-on-read's cor_write). */
export const withImageBlkdebug = (image: Image, config: BlkdebugConfig): { readonly image: Image; readonly debugEvent: (event: DebugEvent) => void } => {
  const rules = makeBlkdebugRules(config, image.location)
  const checked = <A>(operation: BlkdebugIoType, offset: number, length: number, run: () => Effect.Effect<A, ImageError>) =>
    Effect.suspend(() => {
      const failure = rules.check(operation, offset, length)
      return failure !== undefined ? Effect.fail(asImageError(failure, image.location)) : run()
    })
  const wrapped: Image = Object.create(image)
  return {
    image: Object.assign(wrapped, {
      read: (offset: number, into: Uint8Array) => checked("read", offset, into.length, () => image.read(offset, into)),
      write: (offset: number, data: Uint8Array) => checked("write", offset, data.length, () => image.write(offset, data)),
      writeZeroes: (offset: number, length: number, options?: { readonly unmap?: boolean }) =>
        checked("write-zeroes", offset, length, () => image.writeZeroes(offset, length, options)),
      writeCompressed: (offset: number, data: Uint8Array) => checked("write", offset, data.length, () => image.writeCompressed(offset, data)),
      discard: (offset: number, length: number) => checked("discard", offset, length, () => image.discard(offset, length)),
      flush: () => checked("flush", 0, 0, () => image.flush()),
      blockStatus: (offset: number, length: number) => checked("block-status", offset, length, () => image.blockStatus(offset, length))
    }),
    debugEvent: rules.debugEvent
  }
}
