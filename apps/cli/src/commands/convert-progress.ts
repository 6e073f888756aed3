/**
 * What `convert -p` counts, as qemu-img convert does: before copying, one
 * pass over the sources' block status adds up the bytes that will be
 * written as data (BLK_DATA, and BLK_ZERO too with `-S 0`); the progress
 * then advances only by those. Four 1 MiB extents of data in a sparse disk
 * print 25, 50, 75 and 100%, however large the disk.
 */
import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import type { CliFailure } from "../errors.js"

/** qemu-img convert's classes of extents: data to copy, zeros to make, the target's backing file to show. */
export type ExtentKind = "data" | "zero" | "backing"

/** Whether an extent of `kind` counts for the progress (qemu-img: BLK_DATA, or BLK_ZERO when min_sparse is 0). */
export const countsForProgress = (kind: ExtentKind, sparseSize: number): boolean => kind === "data" || (kind === "zero" && sparseSize === 0)

/**
 * The bytes `convert -p` counts to 100%: every extent of the sources that
 * counts for the progress, classified by `status` as the copy classifies it.
 */
export const progressTotal = (
  sources: ReadonlyArray<Image>,
  sparseSize: number,
  status: (source: Image, offset: number, remaining: number) => Effect.Effect<{ readonly kind: ExtentKind; readonly length: number }, CliFailure>
): Effect.Effect<number, CliFailure> =>
  Effect.gen(function* () {
    let total = 0
    for (const source of sources) {
      for (let offset = 0; offset < source.virtualSize; ) {
        const remaining = source.virtualSize - offset
        const extent = yield* status(source, offset, remaining)
        const length = Math.max(1, Math.min(extent.length, remaining))
        if (countsForProgress(extent.kind, sparseSize)) total += length
        offset += length
      }
    }
    return total
  })
