import { Effect } from "effect"
import type { TruncateOptions } from "@qcow2/image"
import { errorReport } from "../../progname.js"
import { optionArgument, parseSizeArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"

type Preallocation = NonNullable<TruncateOptions["preallocation"]>

const isPreallocation = (mode: string): mode is Preallocation => ["off", "metadata", "falloc", "full"].includes(mode)

/** `truncate [-m prealloc_mode] off`: grows or shrinks the virtual size; a grown range preallocated as -m says. */
export const truncateCommand: IoCommand = {
  name: "truncate",
  needsFile: true,
  writes: true,
  alias: "t",
  argmin: 1,
  argmax: 3,
  optstring: "m:",
  args: "[-m prealloc_mode] off",
  oneline: "truncates the current file at the given offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const mode = optionArgument(p, "m") ?? "off"
      if (!isPreallocation(mode)) {
        errorReport(`Invalid preallocation mode '${mode}'`)
        return false
      }
      if (p.operands.length !== 1) {
        printUsage(truncateCommand)
        return false
      }
      const size = parseSizeArgument(p.operands[0]!)
      if (size === undefined) return false
      return yield* ctx.image.truncate(size, { shrink: true, preallocation: mode }).pipe(
        Effect.as(true),
        Effect.catch((e) => Effect.sync(() => (errorReport(e.message), false)))
      )
    })
}
