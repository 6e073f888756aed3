import { Effect } from "effect"
import { print } from "../../output.js"
import { hasOption, optionArgument, parsePatternArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"
import { readvHelp } from "../help-texts.js"
import { hexDump } from "../report.js"
import { printRequestReport, timeRequest } from "../request.js"
import { parseVectorRange, verifyPattern } from "../vectored.js"

/** `readv [-Cqv] [-P pattern] off len [len..]`: one read into several buffers. */
export const readvCommand: IoCommand = {
  name: "readv",
  needsFile: true,
  argmin: 2,
  argmax: -1,
  optstring: "CP:qv",
  args: "[-Cqv] [-P pattern] off len [len..]",
  oneline: "reads a number of bytes at a specified offset",
  help: readvHelp,
  run: (ctx, p) =>
    Effect.gen(function* () {
      let pattern: number | undefined
      const patternText = optionArgument(p, "P")
      if (patternText !== undefined) {
        pattern = parsePatternArgument(patternText)
        if (pattern === undefined) return false
      }
      if (p.operands.length < 2) {
        printUsage(readvCommand)
        return false
      }
      const range = parseVectorRange(p.operands)
      if (range === undefined) return false
      const buf = new Uint8Array(range.count)
      const seconds = yield* timeRequest(ctx.image, "readv", range, () => ctx.image.read(range.offset, buf))
      if (seconds === undefined) return false
      const ok = pattern === undefined || verifyPattern(buf, pattern, range.offset)
      if (hasOption(p, "q")) return ok
      if (hasOption(p, "v")) print(hexDump(buf, range.offset))
      printRequestReport(p, "read", range, seconds)
      return ok
    })
}
