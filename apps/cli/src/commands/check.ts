import { Effect } from "effect"
import type { CheckResult, ImageFormat } from "@qcow2/image"
import { open, type ImageEnv } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import { eprint, print } from "../output.js"
import { cFixed } from "../text/cformat.js"
import { QDict, toQemuJson } from "../text/qjson.js"
import type { OutputFormat } from "./info.js"

export interface CheckOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly repair?: "leaks" | "all"
  readonly output: OutputFormat
  readonly quiet: boolean
  readonly passphrase?: Uint8Array
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

export const runCheck = (o: CheckOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(o.file, {
        readOnly: o.repair === undefined,
        forCheck: true,
        format: o.format,
        passphrase: o.passphrase
      })
      if (image.format !== "qcow2") {
        return yield* Effect.fail(fail("This image format does not support checks", 63))
      }
      const checkFailed = (e: { readonly message: string }) => fail(`Check failed: ${e.message}`)
      const printMessages = (r: CheckResult) => {
        if (r.messages.length > 0) eprint(r.messages.map((m) => m + "\n").join(""))
      }
      let result = yield* image.check(o.repair !== undefined ? { repair: o.repair } : undefined).pipe(Effect.mapError(checkFailed))
      printMessages(result)
      if (result.corruptionsFixed !== 0 || result.leaksFixed !== 0) {
        if (o.output === "human" && !o.quiet) {
          print(
            "The following inconsistencies were found and repaired:\n\n" +
              `    ${result.leaksFixed} leaked clusters\n    ${result.corruptionsFixed} corruptions\n\n` +
              "Double checking the fixed image now...\n"
          )
        }
        const again = yield* image.check().pipe(Effect.mapError(checkFailed))
        printMessages(again)
        result = { ...again, leaksFixed: result.leaksFixed, corruptionsFixed: result.corruptionsFixed }
      }
      if (!o.quiet) print(o.output === "json" ? toQemuJson(checkJson(o.file, image.format, result)) + "\n" : checkHuman(result))
      if (result.checkErrors !== 0) return yield* Effect.fail(fail("Check failed"))
      return checkExitCode(result)
    })
  )
