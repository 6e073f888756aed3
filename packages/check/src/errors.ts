import { Data } from "effect"
import type { CheckResult } from "./result.js"

/**
 * Why a check ended without a result.
 *
 * - "Aborted": the check stopped where QEMU's qcow2_co_check returns an
 *   error ("qemu-img: Check failed: <strerror>", exit 1): a structure it
 *   cannot walk, a repair refused by the overlap check, a table too large.
 * - "Storage": the byte store failed (cause: the StorageError).
 * - "NotQcow2", "Unsupported", "Corrupt": the image cannot even be opened
 *   for a check (QEMU's open with BDRV_O_CHECK fails): bad magic, unknown
 *   version or incompatible feature, an invalid header or extension.
 */
export type CheckErrorReason = "Aborted" | "Storage" | "NotQcow2" | "Unsupported" | "Corrupt"

/** The one failure of checkQcow2 and rebuildRefcounts. */
export class CheckError extends Data.TaggedError("CheckError")<{
  readonly reason: CheckErrorReason
  readonly message: string
  /** The image (path or URL). */
  readonly location: string
  /** Byte offset in the file, where it helps. */
  readonly offset?: number
  /** The C library's text for the errno QEMU fails with ("Input/output error"). */
  readonly strerror: string
  /** Findings reported before the failure, in order (qemu-img prints them before "Check failed"). */
  readonly messages: ReadonlyArray<string>
  /** The one of `messages` qemu-img prints through error_report, with its program name before it (the snapshot table's errors). */
  readonly reported?: string
  /** The counters reached so far (their `messages` are `messages`). */
  readonly result: CheckResult
  readonly cause?: unknown
}> {}
