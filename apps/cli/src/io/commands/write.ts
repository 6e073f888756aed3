import * as fs from "node:fs"
import { Effect } from "effect"
import { print } from "../../output.js"
import { hasOption, optionArgument, parsePatternArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"
import { writeHelp } from "../help-texts.js"
import { exceedsRequestMax, parseRequestRange, printRequestReport, timeRequest, vmStateAligned, vmStateUnsupported } from "../request.js"

/** Fills `data` from the start of `path` (write -s); false after printing why it could not. */
const readSourceFile = (path: string, data: Uint8Array): boolean => {
  try {
    const fd = fs.openSync(path, "r")
    try {
      if (fs.readSync(fd, data, 0, data.length, 0) < data.length) {
        print(`Unexpected end of image\n`)
        return false
      }
      return true
    } finally {
      fs.closeSync(fd)
    }
  } catch (e) {
    print(`${path}: ${e instanceof Error ? e.message : String(e)}\n`)
    return false
  }
}

/**
 * `write [-P pattern | -s source_file | -z [-u] [-n]] [-c] off len`: a
 * pattern (0xcd by default), a file's bytes, zeros (-u may unmap), or
 * compressed clusters (-c).
 */
export const writeCommand: IoCommand = {
  name: "write",
  needsFile: true,
  writes: true,
  help: writeHelp,
  alias: "w",
  argmin: 2,
  argmax: -1,
  optstring: "bcCfnpP:qs:uz",
  args: "[-bcCfnquz] [-P pattern | -s source_file] off len",
  oneline: "writes a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const vmState = hasOption(p, "b")
      const compressed = hasOption(p, "c")
      const zeroes = hasOption(p, "z")
      const patternText = optionArgument(p, "P")
      const sourceFile = optionArgument(p, "s")
      if (vmState && zeroes) {
        print("-b and -z cannot be specified at the same time\n")
        return false
      }
      if (hasOption(p, "f") && (vmState || compressed)) {
        print("-f and -b or -c cannot be specified at the same time\n")
        return false
      }
      if (hasOption(p, "n") && !zeroes) {
        print("-n requires -z to be specified\n")
        return false
      }
      if (hasOption(p, "u") && !zeroes) {
        print("-u requires -z to be specified\n")
        return false
      }
      if ([zeroes, patternText !== undefined, sourceFile !== undefined].filter(Boolean).length > 1) {
        print("Only one of -z, -P, and -s can be specified at the same time\n")
        return false
      }
      if (p.operands.length !== 2) {
        printUsage(writeCommand)
        return false
      }
      let pattern = 0xcd
      if (patternText !== undefined) {
        const v = parsePatternArgument(patternText)
        if (v === undefined) return false
        pattern = v
      }
      const range = parseRequestRange(p.operands)
      if (range === undefined) return false
      if (!(zeroes && hasOption(p, "n")) && exceedsRequestMax(range, p.operands[1]!, " without -n")) return false
      let data: Uint8Array | undefined
      if (!zeroes) {
        data = new Uint8Array(range.count)
        if (sourceFile !== undefined) {
          if (!readSourceFile(sourceFile, data)) return false
        } else {
          data.fill(pattern)
        }
      }
      // qemu-io: VM state and compressed requests must be sector aligned.
      if ((vmState || compressed) && !vmStateAligned(range)) return false
      const vmArea = ctx.image.vmState
      const seconds = yield* timeRequest(
        ctx.image,
        "write",
        range,
        () =>
          data === undefined
            ? ctx.image.writeZeroes(range.offset, range.count, { unmap: hasOption(p, "u") })
            : vmState
              ? vmArea !== undefined
                ? vmArea.write(range.offset, data)
                : vmStateUnsupported
              : compressed
                ? ctx.image.writeCompressed(range.offset, data)
                : ctx.image.write(range.offset, data),
        !vmState
      )
      if (seconds === undefined) return false
      printRequestReport(p, "wrote", range, seconds)
      return true
    })
}
