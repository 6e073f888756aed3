import { Data } from "effect"

/**
 * Why a refcount operation failed.
 * - `Overflow`: a refcount would exceed 2^refcount_bits - 1 (never wrapped).
 * - `Corrupt`: the refcount structures contradict themselves or the image
 *   (a decrease below zero, a refcount block offset that is unaligned or
 *   overlaps other metadata).
 * - `NoSpace`: host offsets would pass the format's 2^56 limit.
 */
export class RefcountError extends Data.TaggedError("RefcountError")<{
  readonly reason: "Overflow" | "Corrupt" | "NoSpace"
  readonly message: string
  readonly offset?: number
  /** The POSIX error QEMU returns here when it is not the usual one for `reason` (EINVAL for a refcount QEMU finds invalid). */
  readonly errno?: "EINVAL"
}> {}
