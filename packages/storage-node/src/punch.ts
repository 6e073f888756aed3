/**
 * fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, the call
 * QEMU's file driver discards with (file-posix's handle_aiocb_discard): the
 * range's blocks go back to the file system, the range reads as zeros and
 * the file keeps its length. Node has no binding for it; it is called
 * through koffi (libc.ts), as for the image locks. Where it cannot be had
 * (not Linux on x64/arm64, koffi missing) there is no binding, and the
 * storage reports that discard does nothing.
 *
 * The call runs on the event loop's thread: punching a hole changes only
 * the file system's extent tree, and discards are rare (shrinks, repairs,
 * guest discards of raw images), not on the read/write path.
 */
import { Effect } from "effect"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { onceWithLibc } from "./libc.js"

const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02
const ENOSYS = 38
const EOPNOTSUPP = 95

/** What a punch did: done, refused by the file system (no hole punching there), or failed with `errno`. */
export type PunchResult = { readonly _tag: "Done" } | { readonly _tag: "Unsupported" } | { readonly _tag: "Failed"; readonly errno: number }

/** Punches a hole over [offset, offset + length) of the file `fd`. */
export type PunchHole = (fd: number, offset: number, length: number) => PunchResult

const bindPunch = onceWithLibc((c): PunchHole => {
  const fallocate = c.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)")
  return (fd, offset, length) => {
    if (length === 0) return { _tag: "Done" }
    if (Number(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) === 0) return { _tag: "Done" }
    const errno = c.errno()
    return errno === EOPNOTSUPP || errno === ENOSYS ? { _tag: "Unsupported" } : { _tag: "Failed", errno }
  }
})

/** The fallocate binding, loaded once per process; undefined where it cannot be had. */
export const punchBinding: () => Promise<PunchHole | undefined> = bindPunch

/** Zeros written over the part of [offset, offset + length) inside the file: a discard where holes cannot be punched. */
export const zeroFill = (shape: BlockStorageShape, offset: number, length: number): Effect.Effect<void, StorageError> =>
  Effect.gen(function* () {
    const end = Math.min(offset + length, yield* shape.size())
    const chunk = new Uint8Array(Math.min(Math.max(end - offset, 0), 1 << 20))
    for (let at = offset; at < end; at += chunk.length) yield* shape.write(at, chunk.subarray(0, Math.min(chunk.length, end - at)))
  })
