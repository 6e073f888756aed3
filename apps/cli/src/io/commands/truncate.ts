import { Effect } from "effect"
import { eprint, print } from "../../output.js"
import { optionArgument, parseSizeArgument } from "../args.js"
import { printUsage, refusesWrites, type IoCommand } from "../command.js"

const PREALLOCATION_MODES = ["off", "metadata", "falloc", "full"]

/** `truncate off`: grows or shrinks the virtual size (preallocation only "off"). */
export const truncateCommand: IoCommand = {
  name: "truncate",
  alias: "t",
  argmin: 1,
  argmax: 3,
  optstring: "m:",
  args: "[-m prealloc_mode] off",
  oneline: "truncates the current file at the given offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const mode = optionArgument(p, "m")
      if (mode !== undefined && !PREALLOCATION_MODES.includes(mode)) {
        print(`Invalid preallocation mode '${mode}'\n`)
        return false
      }
      if (p.operands.length !== 1) {
        printUsage(truncateCommand)
        return false
      }
      const size = parseSizeArgument(p.operands[0]!)
      if (size === undefined) return false
      if (mode !== undefined && mode !== "off") {
        eprint(`qcow2: Preallocation mode '${mode}' is not supported by truncate\n`)
        return false
      }
      if (refusesWrites(ctx.image)) return false
      return yield* ctx.image.truncate(size, { shrink: true }).pipe(
        Effect.as(true),
        Effect.catch((e) => Effect.sync(() => (eprint(`qcow2: ${e.message}\n`), false)))
      )
    })
}
