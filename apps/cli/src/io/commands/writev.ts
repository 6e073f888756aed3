import { Effect } from "effect"
import { optionArgument, parsePatternArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"
import { writevHelp } from "../help-texts.js"
import { printRequestReport, timeRequest } from "../request.js"
import { parseVectorRange } from "../vectored.js"

/** `writev [-Cfq] [-P pattern] off len [len..]`: one write from several buffers (0xcd by default). */
export const writevCommand: IoCommand = {
  name: "writev",
  needsFile: true,
  writes: true,
  argmin: 2,
  argmax: -1,
  optstring: "CfqP:",
  args: "[-Cfq] [-P pattern] off len [len..]",
  oneline: "writes a number of bytes at a specified offset",
  help: writevHelp,
  run: (ctx, p) =>
    Effect.gen(function* () {
      let pattern = 0xcd
      const patternText = optionArgument(p, "P")
      if (patternText !== undefined) {
        const v = parsePatternArgument(patternText)
        if (v === undefined) return false
        pattern = v
      }
      if (p.operands.length < 2) {
        printUsage(writevCommand)
        return false
      }
      const range = parseVectorRange(p.operands)
      if (range === undefined) return false
      const data = new Uint8Array(range.count).fill(pattern)
      const seconds = yield* timeRequest(ctx.image, "writev", range, () => ctx.image.write(range.offset, data))
      if (seconds === undefined) return false
      printRequestReport(p, "wrote", range, seconds)
      return true
    })
}
