/**
 * `qcow2 dd`: qemu-img dd. Creates the output image (raw or qcow2, default
 * options) sized to what is copied, then copies `count` blocks of `bs`
 * bytes from block `skip` of the input, block by block, as qemu-img dd does.
 */
import * as fs from "node:fs"
import { Effect } from "effect"
import { createImage } from "@qcow2/image"
import { parseNbdName } from "@qcow2/nbd/client"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, strerror, type CliFailure } from "../errors.js"
import { reportLine } from "../report.js"
import { openNbdForCreation } from "./convert-sinks.js"
import { parseSize } from "../text/strtosz.js"
import { creationRefusal } from "../qemu-filename.js"

export interface DdOptions {
  readonly operands: ReadonlyArray<string>
  readonly format?: CliFormat
  readonly outFormat: string
  readonly passphrase?: Uint8Array
}

/** The operands of one command line, as qemu-img dd reads them. */
export interface DdOperands {
  readonly bs: number
  readonly count?: number
  readonly skip?: number
  readonly input?: string
  readonly output?: string
}

const INT_MAX = 2147483647
const INT64_MAX = 9223372036854775807n

/** A number operand as qemu-img's cvtnum_full reads it (size suffixes, a range). */
const number = (name: string, text: string, min: number, max: bigint): number | CliFailure => {
  const r = parseSize(text)
  if (!r.ok && r.reason !== "range") {
    reportLine(`Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`)
    return fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
  }
  if (!r.ok || BigInt(r.value) > max || r.value < min) return fail(`Invalid ${name} specified. Must be between ${min} and ${max}.`)
  return r.value
}

/**
 * Parses `name=value` operands (bs, count, skip, if, of); the last of each
 * wins. A malformed number reports its first message line right away, as
 * qemu-img's two error_report calls do; the failure carries the second.
 */
export const parseDdOperands = (operands: ReadonlyArray<string>): DdOperands | CliFailure => {
  let result: { bs: number; count?: number; skip?: number; input?: string; output?: string } = { bs: 512 }
  for (const operand of operands) {
    const eq = operand.indexOf("=")
    const name = eq < 0 ? operand : operand.slice(0, eq)
    const value = operand.slice(eq + 1)
    if (eq < 0 || !["bs", "count", "skip", "if", "of"].includes(name)) return fail(`unrecognized operand ${name}`)
    if (name === "if") result = { ...result, input: value }
    else if (name === "of") result = { ...result, output: value }
    else {
      const n = number(name, value, name === "bs" ? 1 : 0, name === "bs" ? BigInt(INT_MAX) : INT64_MAX)
      if (typeof n !== "number") return n
      result = name === "bs" ? { ...result, bs: n } : name === "count" ? { ...result, count: n } : { ...result, skip: n }
    }
  }
  return result
}

/** Creates an empty output image of `size` bytes (rounded up to 512, as qemu-img's drivers do). */
const createOutput = (file: string, format: "raw" | "qcow2", size: number): Effect.Effect<void, CliFailure, ImageEnv> => {
  const rounded = Math.ceil(size / 512) * 512
  if (format === "qcow2") {
    return Effect.scoped(createImage(file, { size: rounded })).pipe(Effect.mapError((e) => fail(`${file}: error while creating output image: ${e.message}`)))
  }
  return Effect.try({
    try: () => {
      const fd = fs.openSync(file.startsWith("file:") ? file.slice("file:".length) : file, "w")
      try {
        fs.ftruncateSync(fd, rounded)
      } finally {
        fs.closeSync(fd)
      }
    },
    catch: (e) => fail(`${file}: error while creating output image: ${e instanceof Error ? e.message : String(e)}`)
  })
}

/** `qcow2 dd`: as qemu-img dd (nothing printed on success). */
export const runDd = (o: DdOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const parsed = parseDdOperands(o.operands)
      if (!("bs" in parsed)) return yield* Effect.fail(parsed)
      if (parsed.input === undefined || parsed.output === undefined) return yield* Effect.fail(fail("Must specify both input and output files"))
      const input = yield* open(parsed.input, { readOnly: true, format: o.format, passphrase: o.passphrase })
      if (o.outFormat !== "raw" && o.outFormat !== "qcow2") return yield* Effect.fail(fail("Unknown file format"))
      const bs = parsed.bs
      let size = input.virtualSize
      if (parsed.count !== undefined && parsed.count * bs < size) size = parsed.count * bs
      const skipBytes = parsed.skip !== undefined ? parsed.skip * bs : 0
      const skipPast = parsed.skip !== undefined && (!Number.isSafeInteger(skipBytes) || size < skipBytes)
      const outputSize = skipPast ? 0 : size - skipBytes
      // An NBD export is not created: it must hold what is copied (QEMU's nbd driver cannot grow it).
      const refusal = creationRefusal(parsed.output)
      if (refusal !== undefined) return yield* Effect.fail(fail(refusal))
      const nbdOutput = o.outFormat === "raw" && parseNbdName(parsed.output) !== undefined
      if (!nbdOutput) yield* createOutput(parsed.output, o.outFormat, outputSize)
      const output = nbdOutput ? yield* openNbdForCreation(parsed.output, "error while creating output image") : yield* open(parsed.output, { readOnly: false, format: o.outFormat })
      if (nbdOutput && output.virtualSize < Math.ceil(outputSize / 512) * 512) {
        return yield* Effect.fail(fail(`${parsed.output}: error while creating output image: Cannot grow NBD nodes`))
      }
      let inPos = skipBytes
      if (skipPast) {
        reportLine(`${parsed.input}: cannot skip to specified offset`)
        inPos = size
      }
      const buffer = new Uint8Array(bs)
      for (let outPos = 0; inPos < size; ) {
        const bytes = Math.min(bs, size - inPos)
        const view = buffer.subarray(0, bytes)
        yield* input.read(inPos, view).pipe(Effect.mapError((e) => fail(`error while reading from input image file: ${strerror(e)}`)))
        inPos += bytes
        yield* output.write(outPos, view).pipe(Effect.mapError((e) => fail(`error while writing to output image file: ${strerror(e)}`)))
        outPos += bytes
      }
      yield* output.flush().pipe(Effect.mapError((e) => fail(`error while writing to output image file: ${strerror(e)}`)))
      return 0
    })
  )
