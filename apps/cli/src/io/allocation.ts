import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"

/** An extent whose bytes are all allocated in the top layer, or none of them (bdrv_is_allocated). */
export interface AllocationRun {
  readonly allocated: boolean
  /** At least 1, at most the length asked for. */
  readonly length: number
}

/** The run of equal top-layer allocation starting at `offset`, at most `length` bytes. */
export const allocationRun = (image: Image, offset: number, length: number): Effect.Effect<AllocationRun, ImageError> =>
  image.blockStatus(offset, length).pipe(
    Effect.map((s) => ({ allocated: s.present && s.depth === 0, length: Math.max(1, Math.min(s.length, length)) }))
  )
