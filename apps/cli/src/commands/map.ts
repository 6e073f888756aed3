import { Effect } from "effect"
import { CryptMethod } from "@qcow2/format"
import type { BlockStatus, Image, ImageFormat } from "@qcow2/image"
import { open, type ImageEnv } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import { chainLayers, type OutputFormat } from "./info.js"
import { eprint, print } from "../output.js"
import { cAltHex, padRight } from "../text/cformat.js"

export interface MapOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly output: OutputFormat
  readonly startOffset?: number
  readonly maxLength?: number
  readonly passphrase?: Uint8Array
  /** `-U`: share the image with every other user (read-only opens; see OpenOptions.forceShare). */
  readonly forceShare?: boolean
}

/** One record of `qemu-img map` (qemu-img.c MapEntry). */
export interface MapEntry {
  start: number
  length: number
  readonly depth: number
  readonly present: boolean
  readonly zero: boolean
  readonly data: boolean
  readonly offset?: number
  /** File holding the data, when `offset` is set (human output only). */
  readonly filename?: string
}

/** qemu-img.c entry_mergeable: same status and, with offsets, contiguous in the same file. */
export const mergeable = (curr: MapEntry, next: MapEntry): boolean => {
  if (curr.length === 0) return false
  if (curr.zero !== next.zero || curr.data !== next.data || curr.depth !== next.depth || curr.present !== next.present) return false
  if ((curr.filename === undefined) !== (next.filename === undefined)) return false
  if (curr.filename !== undefined && curr.filename !== next.filename) return false
  if ((curr.offset === undefined) !== (next.offset === undefined)) return false
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false
  return true
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

/**
 * Converts the driver's block status into qemu-img's record. QEMU reports
 * no host offset for compressed or encrypted data (there is no plain
 * mapping to show), and names the file that holds the bytes: the layer at
 * `depth`, or its external data file.
 */
export const toEntry = (status: BlockStatus, layers: ReadonlyArray<{ readonly name: string; readonly image: Image }>): MapEntry => {
  const layer = layers[Math.min(status.depth, layers.length - 1)]!
  const encrypted = (layer.image.header?.header.cryptMethod ?? CryptMethod.None) !== CryptMethod.None
  const hasOffset = status.hostOffset !== undefined && !status.compressed && !encrypted
  const dataFile = layer.image.header?.extensions.externalDataFile
  return {
    start: status.offset,
    length: status.length,
    // The driver reports the chain length when no layer has the bytes; qemu-img reports the last layer it asked.
    depth: status.present ? status.depth : Math.min(status.depth, layers.length - 1),
    present: status.present,
    zero: status.zero,
    data: status.data,
    ...(hasOffset ? { offset: status.hostOffset!, filename: layer.image.dataFile !== undefined && dataFile !== undefined ? dataFile : layer.name } : {})
  }
}

export const runMap = (options: MapOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(options.file, { readOnly: true, format: options.format, passphrase: options.passphrase, forceShare: options.forceShare === true })
      const layers = chainLayers(image, options.file)
      const start = options.startOffset ?? 0
      const end = options.maxLength === undefined ? image.virtualSize : Math.min(image.virtualSize, start + options.maxLength)
      const json = options.output === "json"
      print(json ? "[" : humanHeader())
      let first = true
      const emit = (e: MapEntry): boolean => {
        if (json) {
          print((first ? "" : ",\n") + jsonEntry(e))
          first = false
          return true
        }
        if (e.data && e.offset === undefined) {
          eprint("qcow2: File contains external, encrypted or compressed clusters.\n")
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
          .pipe(Effect.mapError((e) => fail(`Could not read file metadata: ${e.message}`)))
        const next = toEntry({ ...status, length: Math.min(status.length, end - offset) }, layers)
        if (next.length <= 0) return yield* Effect.fail(fail(`Could not read file metadata: no progress at offset ${offset}`))
        if (mergeable(curr, next)) {
          curr.length += next.length
          continue
        }
        if (curr.length > 0 && !emit(curr)) return 1
        curr = next
      }
      if (!emit(curr)) return 1
      if (json) print("]\n")
      return 0
    })
  )
