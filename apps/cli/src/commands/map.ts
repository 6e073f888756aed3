import { Effect } from "effect"
import { chainLayers, mergeable, toMapEntry as toEntry, type MapEntry } from "@qcow2/image"
import { fileNameOf, open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, strerror, type CliFailure } from "../errors.js"
import type { OutputFormat } from "./info.js"
import { print } from "../output.js"
import { errorReport } from "../progname.js"
import { cAltHex, padRight } from "../text/cformat.js"

export { mergeable, type MapEntry }

export interface MapOptions {
  readonly file: string
  readonly format?: CliFormat
  readonly output: OutputFormat
  readonly startOffset?: number
  readonly maxLength?: number
  readonly passphrase?: Uint8Array
  /** `-U`: share the image with every other user (read-only opens; see OpenOptions.forceShare). */
  readonly forceShare?: boolean
}

/** A JSON record exactly as qemu-img prints it (one line, its own spacing). */
export const jsonEntry = (e: MapEntry): string =>
  `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
  (e.offset !== undefined ? `, "offset": ${e.offset}` : "") +
  "}"

export const humanHeader = (): string => padRight("Offset", 16) + padRight("Length", 16) + padRight("Mapped to", 16) + "File\n"

/** A human row; only data that is not a zero range is listed. */
export const humanEntry = (e: MapEntry): string =>
  padRight(cAltHex(e.start), 16) + padRight(cAltHex(e.length), 16) + padRight(cAltHex(e.offset ?? 0), 16) + (e.filename ?? "") + "\n"

export const runMap = (options: MapOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(options.file, { readOnly: true, format: options.format, passphrase: options.passphrase, forceShare: options.forceShare === true })
      const layers = chainLayers(image, fileNameOf(options.file))
      const start = options.startOffset ?? 0
      const end = options.maxLength === undefined ? image.virtualSize : Math.min(image.virtualSize, start + options.maxLength)
      const json = options.output === "json"
      print(json ? "[" : humanHeader())
      // `more`: another entry follows, whose separator QEMU prints with this one (so a failure after it leaves ",").
      const emit = (e: MapEntry, more: boolean): boolean => {
        if (json) {
          print(jsonEntry(e) + (more ? ",\n" : ""))
          return true
        }
        if (e.data && e.offset === undefined) {
          errorReport("File contains external, encrypted or compressed clusters.")
          return false
        }
        if (e.data && !e.zero) print(humanEntry(e))
        return true
      }
      let curr: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false }
      while (curr.start + curr.length < end) {
        const offset = curr.start + curr.length
        const status = yield* image
          .blockStatus(offset, Math.min(end - offset, 2 ** 30))
          // QEMU gives the errno's text; a corruption event has printed the details.
          .pipe(Effect.mapError((e) => fail(`Could not read file metadata: ${strerror(e)}`)))
        const next = toEntry({ ...status, length: Math.min(status.length, end - offset) }, layers)
        if (next.length <= 0) return yield* Effect.fail(fail(`Could not read file metadata: no progress at offset ${offset}`))
        if (mergeable(curr, next)) {
          curr.length += next.length
          continue
        }
        if (curr.length > 0 && !emit(curr, true)) return 1
        curr = next
      }
      if (!emit(curr, false)) return 1
      if (json) print("]\n")
      return 0
    })
  )
