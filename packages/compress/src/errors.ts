import { Data } from "effect"
import type { CompressionType } from "./CompressionType.js"

/**
 * Why a compressed cluster could not be decoded.
 * - `Corrupt`: the data is not a valid stream (bad block, bad checksum,
 *   a frame that would overflow the cluster, ...).
 * - `ShortOutput`: the data is valid but ends (or the input runs out)
 *   before the whole cluster is produced.
 * - `Unsupported`: unknown compression type, a zstd dictionary, or a
 *   cluster size outside 512 B..2 MiB.
 */
export type DecompressionErrorReason = "Corrupt" | "ShortOutput" | "Unsupported"

/** A compressed cluster failed to decode (QEMU reports EIO in the same cases). */
export class DecompressionError extends Data.TaggedError("DecompressionError")<{
  readonly compressionType: CompressionType
  readonly reason: DecompressionErrorReason
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * Why a cluster could not be compressed. Data that does not shrink is not an
 * error (compress returns `undefined`).
 * - `Unsupported`: unknown compression type, bad level or cluster size.
 * - `Failed`: the codec or a pool worker failed.
 */
export type CompressionErrorReason = "Unsupported" | "Failed"

/** A cluster could not be compressed. */
export class CompressionError extends Data.TaggedError("CompressionError")<{
  readonly compressionType: CompressionType
  readonly reason: CompressionErrorReason
  readonly message: string
  readonly cause?: unknown
}> {}
