import { Effect } from "effect"
import { printUsage, type IoCommand } from "../command.js"
import { discardHelp } from "../help-texts.js"
import { exceedsRequestMax, parseRequestRange, printRequestReport, timeRequest } from "../request.js"

/** `discard off len`: deallocates the range. */
export const discardCommand: IoCommand = {
  name: "discard",
  needsFile: true,
  writes: true,
  help: discardHelp,
  alias: "d",
  argmin: 2,
  argmax: -1,
  optstring: "Cq",
  args: "[-Cq] off len",
  oneline: "discards a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      if (p.operands.length !== 2) {
        printUsage(discardCommand)
        return false
      }
      const range = parseRequestRange(p.operands)
      if (range === undefined || exceedsRequestMax(range, p.operands[1]!)) return false
      const seconds = yield* timeRequest(ctx.image, "discard", range, () => ctx.image.discard(range.offset, range.count))
      if (seconds === undefined) return false
      printRequestReport(p, "discard", range, seconds)
      return true
    })
}
