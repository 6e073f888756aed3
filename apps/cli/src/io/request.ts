/**
 * The skeleton qemu-io's read, write and discard share: "off len"
 * operands, the request-size limit, a timed request whose failure prints
 * "<command> failed: <strerror>", and the statistics report.
 */
import { Effect } from "effect"
import { ImageError, type Image } from "@qcow2/image"
import { errnoText, strerror } from "../errors.js"
import { print } from "../output.js"
import { hasOption, parseSizeArgument } from "./args.js"
import type { GetoptResult } from "./getopt.js"
import { report } from "./report.js"

/** Largest single request qemu accepts (BDRV_REQUEST_MAX_BYTES). */
export const REQUEST_MAX = 2147483136

/** The bytes a request covers. */
export interface RequestRange {
  readonly offset: number
  readonly count: number
}

/** The "off len" operands; undefined after printing the parse error. */
export const parseRequestRange = (operands: ReadonlyArray<string>): RequestRange | undefined => {
  const offset = parseSizeArgument(operands[0]!)
  if (offset === undefined) return undefined
  const count = parseSizeArgument(operands[1]!)
  if (count === undefined) return undefined
  return { offset, count }
}

/**
 * Whether `range` is longer than one request may be, after printing
 * "length cannot exceed …"; `qualifier` goes after the limit (" without -n").
 */
export const exceedsRequestMax = (range: RequestRange, lengthText: string, qualifier = ""): boolean => {
  if (range.count <= REQUEST_MAX) return false
  print(`length cannot exceed ${REQUEST_MAX}${qualifier}, given ${lengthText}\n`)
  return true
}

/** How a timed request ended: the seconds it took, or the strerror text of its failure. */
export type RequestOutcome = { readonly ok: true; readonly seconds: number } | { readonly ok: false; readonly failure: string }

/**
 * Runs `request` and times it as qemu-io does. The clock starts before the
 * range check; a range past the end of the image fails with EIO, as in
 * QEMU's block layer (`withinDisk` false: the VM state area, past the disk).
 */
export const measureRequest = (
  image: Image,
  range: RequestRange,
  request: () => Effect.Effect<void, ImageError>,
  withinDisk = true
): Effect.Effect<RequestOutcome> =>
  Effect.suspend(() => {
    const start = performance.now()
    if (withinDisk && range.offset + range.count > image.virtualSize) return Effect.succeed({ ok: false, failure: errnoText("EIO") })
    return request().pipe(
      Effect.as(undefined),
      Effect.catch((error) => Effect.succeed(strerror(error))),
      Effect.map((failure): RequestOutcome => (failure === undefined ? { ok: true, seconds: (performance.now() - start) / 1000 } : { ok: false, failure }))
    )
  })

/**
 * `measureRequest`, whose failure prints "<command> failed: <strerror>".
 * Succeeds with the seconds the request took, or undefined when it failed.
 */
export const timeRequest = (
  image: Image,
  command: string,
  range: RequestRange,
  request: () => Effect.Effect<void, ImageError>,
  withinDisk = true
): Effect.Effect<number | undefined> =>
  Effect.map(measureRequest(image, range, request, withinDisk), (outcome) => {
    if (outcome.ok) return outcome.seconds
    print(`${command} failed: ${outcome.failure}\n`)
    return undefined
  })

/** The failure of a VM state request on a format without a VM state area (raw): ENOTSUP. */
export const vmStateUnsupported: Effect.Effect<void, ImageError> = Effect.fail(
  new ImageError({ reason: "Unsupported", message: "VM state is not supported by this format" })
)

/** Whether both ends of a VM state (or compressed) request are sector aligned, after printing qemu-io's message for the first that is not. */
export const vmStateAligned = (range: RequestRange): boolean => {
  for (const [value, what] of [
    [range.offset, "offset"],
    [range.count, "count"]
  ] as const) {
    if (value % 512 !== 0) {
      print(`${value} is not a sector-aligned value for '${what}'\n`)
      return false
    }
  }
  return true
}

/** The statistics report of a request that succeeded ("wrote 512/512 bytes at offset 0" …); -C: as CSV; -q: nothing. */
export const printRequestReport = (parsed: GetoptResult, verb: string, range: RequestRange, seconds: number): void => {
  if (hasOption(parsed, "q")) return
  print(report(verb, seconds, range.offset, range.count, range.count, 1, hasOption(parsed, "C")))
}
