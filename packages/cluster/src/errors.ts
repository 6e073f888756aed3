import { Data } from "effect"

/**
 * A mapping problem found in the image's L1/L2 tables, or a request the
 * mapping layer cannot serve.
 * - `Corrupt`: an entry no valid image has (the driver marks the image corrupt).
 * - `ReadOnly`: a write reached an image opened read-only or flagged corrupt.
 * - `Unsupported`: e.g. compressed writes with an external data file.
 * - `InvalidArgument`: e.g. a compressed write that is not one whole cluster.
 */
export class ClusterError extends Data.TaggedError("ClusterError")<{
  readonly reason: "Corrupt" | "ReadOnly" | "Unsupported" | "InvalidArgument"
  readonly message: string
  readonly offset?: number
  /** The POSIX error QEMU returns in this situation, when it differs from what `reason` suggests. */
  readonly errno?: "EIO" | "EINVAL" | "ENOTSUP"
}> {}
