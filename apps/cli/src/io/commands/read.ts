import { Effect } from "effect"
import { print } from "../../output.js"
import { hasOption, optionArgument, parsePatternArgument, parseSizeArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"
import { readHelp } from "../help-texts.js"
import { hexDump } from "../report.js"
import { allBytesAre } from "../vectored.js"
import { exceedsRequestMax, parseRequestRange, printRequestReport, timeRequest, vmStateAligned, vmStateUnsupported } from "../request.js"

/** `read [-b] [-P pattern [-s off] [-l len]] off len`: -P checks the bytes read, -v dumps them; -b reads VM state. */
export const readCommand: IoCommand = {
  name: "read",
  needsFile: true,
  help: readHelp,
  alias: "r",
  argmin: 2,
  argmax: -1,
  optstring: "bCl:pP:qs:v",
  args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
  oneline: "reads a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      if (p.operands.length !== 2) {
        printUsage(readCommand)
        return false
      }
      let pattern: number | undefined
      const patternText = optionArgument(p, "P")
      if (patternText !== undefined) {
        pattern = parsePatternArgument(patternText)
        if (pattern === undefined) return false
      }
      let patternOffset = 0
      const patternOffsetText = optionArgument(p, "s")
      if (patternOffsetText !== undefined) {
        const v = parseSizeArgument(patternOffsetText)
        if (v === undefined) return false
        patternOffset = v
      }
      let patternLength: number | undefined
      const patternLengthText = optionArgument(p, "l")
      if (patternLengthText !== undefined) {
        const v = parseSizeArgument(patternLengthText)
        if (v === undefined) return false
        patternLength = v
      }
      if (pattern === undefined && (patternOffsetText !== undefined || patternLengthText !== undefined)) {
        printUsage(readCommand)
        return false
      }
      const range = parseRequestRange(p.operands)
      if (range === undefined || exceedsRequestMax(range, p.operands[1]!)) return false
      const vmState = hasOption(p, "b")
      if (vmState && !vmStateAligned(range)) return false
      const checkedLength = patternLength ?? range.count - patternOffset
      if (checkedLength < 0 || checkedLength + patternOffset > range.count) {
        print("pattern verification range exceeds end of read data\n")
        return false
      }
      const buf = new Uint8Array(range.count)
      const seconds = yield* timeRequest(
        ctx.image,
        "read",
        range,
        () => (!vmState ? ctx.image.read(range.offset, buf) : ctx.image.vmState !== undefined ? ctx.image.vmState.read(range.offset, buf) : vmStateUnsupported),
        !vmState
      )
      if (seconds === undefined) return false
      let ok = true
      if (pattern !== undefined && !allBytesAre(buf.subarray(patternOffset, patternOffset + checkedLength), pattern)) {
        print(`Pattern verification failed at offset ${range.offset + patternOffset}, ${checkedLength} bytes\n`)
        ok = false
      }
      if (!hasOption(p, "q") && hasOption(p, "v")) print(hexDump(buf, range.offset))
      printRequestReport(p, "read", range, seconds)
      return ok
    })
}
