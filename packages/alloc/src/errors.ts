import { Data } from "effect"

/**
 * Why a refcount operation failed.
 * - `Overflow`: a refcount would exceed 2^refcount_bits - 1 (never wrapped).
 * - `Corrupt`: the refcount structures contradict themselves or the image
 *   (a refcount block offset that is unaligned or overlaps other metadata):
 *   the engine marks the image corrupt.
 * - `Underflow`: a decrease below zero. QEMU's update_refcount fails it
 *   with EINVAL and signals no corruption (freeing a cluster whose refcount
 *   is already 0 only prints "qcow2_free_clusters failed").
 * - `NoSpace`: host offsets would pass the format's 2^56 limit.
 */
export class RefcountError extends Data.TaggedError("RefcountError")<{
  readonly reason: "Overflow" | "Underflow" | "Corrupt" | "NoSpace"
  readonly message: string
  readonly offset?: number
  /** The POSIX error QEMU returns here when it is not the usual one for `reason` (EINVAL for a refcount QEMU finds invalid, EIO for a refcount block it cannot read). */
  readonly errno?: "EINVAL" | "EIO"
}> {}
