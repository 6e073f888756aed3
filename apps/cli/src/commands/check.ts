import { Cause, Effect, Exit, Option } from "effect"
import type { Scope } from "effect"
import { StorageOpener } from "@qcow2/storage"
import { CheckError, FORCE_SHARE_READ_ONLY, ImageError, checkQcow2, lockRequest, openImage, probedRawWarning, type CheckResult, type NodeDriver } from "@qcow2/image"
import { driverReport, resolveNamed, type ImageEnv, type CliFormat } from "../env.js"
import { openNode } from "../file-node.js"
import { describeCause, fail, openFailure, type CliFailure } from "../errors.js"
import { programName } from "../progname.js"
import { eprint, print } from "../output.js"
import { cFixed } from "../text/cformat.js"
import { QDict, toQemuJson } from "../text/qjson.js"
import type { OutputFormat } from "./info.js"

export interface CheckOptions {
  readonly file: string
  readonly format?: CliFormat
  readonly repair?: "leaks" | "all"
  readonly output: OutputFormat
  readonly quiet: boolean
  readonly passphrase?: Uint8Array
  /** `-U`: share the image with every other user (read-only opens; see OpenOptions.forceShare). */
  readonly forceShare?: boolean
}

/** QAPI ImageCheck, counters present only when non-zero (qemu-img.c collect_image_check). */
export const checkJson = (file: string, format: string, r: CheckResult): QDict => {
  const nz = (n: number): number | undefined => (n !== 0 ? n : undefined)
  return QDict.of([
    ["filename", file],
    ["format", format],
    ["check-errors", r.checkErrors],
    ["image-end-offset", nz(r.imageEndOffset)],
    ["corruptions", nz(r.corruptions)],
    ["leaks", nz(r.leaks)],
    ["corruptions-fixed", nz(r.corruptionsFixed)],
    ["leaks-fixed", nz(r.leaksFixed)],
    ["total-clusters", nz(r.totalClusters)],
    ["allocated-clusters", nz(r.allocatedClusters)],
    ["fragmented-clusters", nz(r.fragmentedClusters)],
    ["compressed-clusters", nz(r.compressedClusters)]
  ])
}

/** qemu-img.c dump_human_image_check. */
export const checkHuman = (r: CheckResult): string => {
  let s = ""
  if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) {
    s += "No errors were found on the image.\n"
  } else {
    if (r.corruptions !== 0) {
      s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`
    }
    if (r.leaks !== 0) {
      s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`
    }
    if (r.checkErrors !== 0) s += `\n${r.checkErrors} internal errors have occurred during the check.\n`
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    s +=
      `${r.allocatedClusters}/${r.totalClusters} = ${cFixed((r.allocatedClusters * 100) / r.totalClusters, 2)}% allocated, ` +
      `${cFixed((r.fragmentedClusters * 100) / r.allocatedClusters, 2)}% fragmented, ` +
      `${cFixed((r.compressedClusters * 100) / r.allocatedClusters, 2)}% compressed clusters\n`
  }
  if (r.imageEndOffset !== 0) s += `Image end offset: ${r.imageEndOffset}\n`
  return s
}

/** Exit status of qemu-img check: 2 corruptions, 3 leaks only, 0 clean. */
export const checkExitCode = (r: CheckResult): number => (r.corruptions !== 0 ? 2 : r.leaks !== 0 ? 3 : 0)

/** A qcow2 file ready for its check, or a format that has none. */
type Checkable =
  | { readonly format: "qcow2"; readonly check: (repair: "leaks" | "all" | undefined) => Effect.Effect<CheckResult, CheckError | CliFailure> }
  | { readonly format: Exclude<NodeDriver, "qcow2"> }

/**
 * Opens the image for `check` (QEMU's BDRV_O_CHECK). The driver opens it
 * read-only first, as the judge of what qemu-img refuses to open (bad
 * header, unknown features, missing backing file …) and of its format;
 * the check then runs on the file alone, read-write for a repair, so that
 * nothing of the driver's state is written over a repaired file. When the
 * driver refuses a qcow2 image as corrupt (an L1 or refcount table past the
 * end of the file, a bad snapshot table …), the check still runs, as
 * qemu-img's open in check mode skips those validations; other commands
 * keep refusing such images. A check that cannot open the image either
 * fails with the driver's open error.
 */
const openForCheck = (o: CheckOptions): Effect.Effect<Checkable, CliFailure, Scope.Scope | ImageEnv> =>
  Effect.gen(function* () {
    const named = resolveNamed(o.file, { readOnly: true, forCheck: true, format: o.format, passphrase: o.passphrase, forceShare: o.forceShare === true })
    if ("error" in named) return yield* Effect.fail(fail(`Could not open '${o.file}': ${named.error}`))
    const { file, options } = named
    if (o.forceShare === true && o.repair !== undefined) return yield* Effect.fail(fail(`Could not open '${o.file}': ${FORCE_SHARE_READ_ONLY}`))
    // The null-co device and a quorum are nodes, not files: they open as the name described them.
    const opening = named.nullDevice !== undefined || named.quorum !== undefined ? openNode(named, true, openImage(file, options)) : openImage(file, options)
    const opened = yield* Effect.exit(Effect.scoped(Effect.map(opening, (image) => image.format)))
    if (Exit.isSuccess(opened) && opened.value !== "qcow2") {
      // A repair opens the image for writing: QEMU's raw driver warns about a probed format then.
      if (opened.value === "raw" && o.repair !== undefined && options.format === undefined && named.nullDevice === undefined && named.quorum === undefined) driverReport(probedRawWarning(o.file))
      return { format: opened.value }
    }
    if (Exit.isFailure(opened) && Cause.hasInterruptsOnly(opened.cause)) return yield* Effect.interrupt
    // A driver that dies on a damaged image (a table entry it cannot decode) has refused it as corrupt.
    const refused = Exit.isSuccess(opened) ? undefined : Option.getOrElse(Cause.findErrorOption(opened.cause), () =>
      new ImageError({ reason: "Corrupt", message: describeCause(opened.cause), location: file }))
    if (refused !== undefined && refused.reason !== "Corrupt") return yield* Effect.fail(openFailure(file, refused))
    const opener = yield* StorageOpener
    const storage = yield* Effect.mapError(opener.open(file, { readOnly: o.repair === undefined }), (e) =>
      openFailure(file, refused ?? new ImageError({ reason: "Storage", message: e.message, location: file, cause: e }))
    )
    if (storage.lock !== undefined) {
      const readOnly = o.repair === undefined
      yield* Effect.mapError(storage.lock(lockRequest("qcow2", readOnly, o.forceShare === true)), (e) =>
        openFailure(file, new ImageError({ reason: e.reason === "Locked" ? "Locked" : "Storage", message: e.message, location: file, cause: e }))
      )
    }
    const unopenable = (e: CheckError): CheckError | CliFailure =>
      e.reason === "Aborted" || e.reason === "Storage" ? e : openFailure(file, refused ?? new ImageError({ reason: e.reason, message: e.message, location: file }))
    return {
      format: "qcow2" as const,
      check: (repair) => Effect.mapError(checkQcow2(storage, repair !== undefined ? { repair } : {}), unopenable)
    }
  })

export const runCheck = (o: CheckOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const target = yield* openForCheck(o)
      if (target.format !== "qcow2") {
        return yield* Effect.fail(fail("This image format does not support checks", 63))
      }
      const printMessages = (messages: ReadonlyArray<string>) => {
        if (messages.length > 0) eprint(messages.map((m) => m + "\n").join(""))
      }
      // qemu-img prints the findings made before a check fails, then "Check failed: <strerror>".
      const checkFailed = (e: CheckError | CliFailure): CliFailure => {
        if (e._tag === "CliFailure") return e
        printMessages(e.messages.map((m) => (m === e.reported ? `${programName}: ${m}` : m)))
        return fail(`Check failed: ${e.reason === "Aborted" ? e.strerror : e.message}`)
      }
      // After a repair that fixed something, the result is already that of qemu-img's second, read-only check.
      const result = yield* target.check(o.repair).pipe(Effect.mapError(checkFailed))
      printMessages(result.messages)
      if ((result.corruptionsFixed !== 0 || result.leaksFixed !== 0) && o.output === "human" && !o.quiet) {
        print(
          "The following inconsistencies were found and repaired:\n\n" +
            `    ${result.leaksFixed} leaked clusters\n    ${result.corruptionsFixed} corruptions\n\n` +
            "Double checking the fixed image now...\n"
        )
      }
      if (!o.quiet) print(o.output === "json" ? toQemuJson(checkJson(o.file, target.format, result)) + "\n" : checkHuman(result))
      if (result.checkErrors !== 0) return yield* Effect.fail(fail("Check failed"))
      return checkExitCode(result)
    })
  )
