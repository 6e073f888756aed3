import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import { splitOptionList } from "../createopts.js"
import { open, type ImageEnv } from "../env.js"
import { errnoOf, errnoText, fail, type CliFailure, type Errno } from "../errors.js"
import { eprint, print } from "../output.js"
import { programName } from "../progname.js"
import { snapshotHeader, snapshotRow } from "./info.js"

/** What `qemu-img snapshot` is asked to do (-l, -c, -a, -d; none: open the image and stop). */
export type SnapshotAction =
  | { readonly kind: "none" }
  | { readonly kind: "list" }
  | { readonly kind: "create" | "apply" | "delete"; readonly name: string }

export interface SnapshotOptions {
  readonly file: string
  readonly action: SnapshotAction
  readonly passphrase?: Uint8Array
}

/** errno numbers, for "Could not create snapshot 'x': -22 (Invalid argument)". */
const ERRNO_NUMBER: Record<Errno, number> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EAGAIN: 11,
  EACCES: 13,
  EFBIG: 27,
  ENOSPC: 28,
  EINVAL: 22,
  ERANGE: 34,
  ENOTSUP: 95,
  EDQUOT: 122,
  ENOMEDIUM: 123
}

/** The snapshot table as qemu-img prints it (qemu-img.c dump_snapshots): nothing when there is none. */
export const snapshotList = (image: Image): string =>
  image.snapshots.length === 0 ? "" : `Snapshot list:\n${snapshotHeader()}\n${image.snapshots.map((s) => `${snapshotRow(s)}\n`).join("")}`

/** The wall clock with microseconds, as g_get_real_time gives it. */
const now = (): { readonly seconds: number; readonly nanoseconds: number } => {
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000)
  return { seconds: Math.floor(micros / 1_000_000), nanoseconds: (micros % 1_000_000) * 1000 }
}

/**
 * QEMU reports the failures of its up-front checks of a revert (the
 * snapshot's L1 table, the resize) on a line of their own before the
 * "Could not apply" line; a missing snapshot or a failure on the way only
 * gives that line.
 */
const reportedBeforeApply = (error: ImageError): boolean => error.reason === "InvalidArgument" && error.errno !== "ENOENT"

/** `qemu-img snapshot` (qemu-img.c img_snapshot), with its messages and exit status. */
export const runSnapshot = (options: SnapshotOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const action = options.action
      const image = yield* open(options.file, { readOnly: action.kind === "list", passphrase: options.passphrase })
      const snapshots = image.internalSnapshots
      switch (action.kind) {
        case "none":
          return 0
        case "list":
          print(snapshotList(image))
          return 0
        case "create": {
          const failure = (errno: Errno) => fail(`Could not create snapshot '${action.name}': -${ERRNO_NUMBER[errno]} (${errnoText(errno)})`)
          if (snapshots === undefined) return yield* failure("ENOTSUP")
          yield* Effect.mapError(snapshots.create(action.name, now()), (error) => failure(errnoOf(error)))
          return 0
        }
        case "apply": {
          const prefix = `Could not apply snapshot '${action.name}': `
          if (snapshots === undefined) return yield* fail(`${prefix}Block driver does not support snapshots`)
          yield* Effect.mapError(snapshots.apply(action.name), (error) => {
            if (reportedBeforeApply(error)) eprint(`${programName}: ${error.message}\n`)
            return fail(`${prefix}Failed to load snapshot: ${errnoText(errnoOf(error))}`)
          })
          return 0
        }
        case "delete": {
          // qemu-img looks the snapshot up by name only, then deletes that one by its ID and name.
          const found = image.snapshots.find((s) => s.name === action.name)
          if (found === undefined || snapshots === undefined) return yield* fail(`Could not delete snapshot '${action.name}': snapshot not found`)
          yield* Effect.mapError(snapshots.delete(found.id, found.name), (error) => fail(`Could not delete snapshot '${action.name}': ${error.message}`))
          return 0
        }
      }
    })
  )

/**
 * Which snapshot `convert -l` reads: `snapshot.id=…,snapshot.name=…`
 * (both must match when both are given), or a bare ID or name.
 */
export type SnapshotSelector =
  | { readonly kind: "options"; readonly id?: string; readonly name?: string }
  | { readonly kind: "idOrName"; readonly value: string }

/** Parses `-l` as qemu-img does (an option list when it starts with "snapshot."). */
export const parseSnapshotParam = (text: string): SnapshotSelector | CliFailure => {
  if (!text.startsWith("snapshot.")) return { kind: "idOrName", value: text }
  let id: string | undefined
  let name: string | undefined
  for (const [key, value] of splitOptionList(text)) {
    if (key === "snapshot.id") id = value
    else if (key === "snapshot.name") name = value
    else {
      eprint(`${programName}: Invalid parameter '${key}'\n`)
      return fail(`Failed in parsing snapshot param '${text}'`)
    }
  }
  return { kind: "options", ...(id !== undefined ? { id } : {}), ...(name !== undefined ? { name } : {}) }
}

/**
 * Makes the first source read as the selected snapshot (qemu-img convert
 * -l: bdrv_snapshot_load_tmp, or by ID then by name for a bare word, which
 * needs a single source).
 */
export const loadConvertSnapshot = (sources: ReadonlyArray<Image>, selector: SnapshotSelector): Effect.Effect<void, CliFailure> => {
  const image = sources[0]!
  const snapshots = image.internalSnapshots
  const failed = (message: string) => fail(`Failed to load snapshot: ${message}`)
  if (selector.kind === "idOrName" && sources.length > 1) return Effect.fail(fail("No support for concatenating multiple snapshot"))
  if (snapshots === undefined) {
    return Effect.fail(failed(`Block format '${image.format}' used by device '' does not support temporarily loading internal snapshots`))
  }
  if (selector.kind === "options") {
    if (selector.id === undefined && selector.name === undefined) return Effect.fail(failed("snapshot_id and name are both NULL"))
    return Effect.mapError(snapshots.load(selector.id, selector.name), (error) => failed(error.message))
  }
  return snapshots.load(selector.value, undefined).pipe(
    Effect.catchIf(
      (error) => error.errno === "ENOENT" || error.errno === "EINVAL",
      () => snapshots.load(undefined, selector.value)
    ),
    Effect.mapError((error) => failed(error.message))
  )
}
