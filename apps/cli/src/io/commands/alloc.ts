import { Effect } from "effect"
import { strerror } from "../../errors.js"
import { print } from "../../output.js"
import { cvtstr } from "../../text/sizes.js"
import { allocationRun } from "../allocation.js"
import { parseSizeArgument } from "../args.js"
import type { IoCommand } from "../command.js"

/** `alloc offset [count]`: how many of the bytes (512 by default, clipped to the image) are allocated in the top layer. */
export const allocCommand: IoCommand = {
  name: "alloc",
  needsFile: true,
  alias: "a",
  argmin: 1,
  argmax: 2,
  optstring: "",
  args: "offset [count]",
  oneline: "checks if offset is allocated in the file",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const offset = parseSizeArgument(p.operands[0]!)
      if (offset === undefined) return false
      let count = 512
      if (p.operands.length === 2) {
        const c = parseSizeArgument(p.operands[1]!)
        if (c === undefined) return false
        count = c
      }
      // qemu-io counts (and reports) only the bytes inside the image.
      count = Math.max(0, Math.min(count, ctx.image.virtualSize - offset))
      const end = offset + count
      let allocated = 0
      let pos = offset
      while (pos < end) {
        const run = yield* allocationRun(ctx.image, pos, end - pos)
        if (run.allocated) allocated += run.length
        pos += run.length
      }
      print(`${allocated}/${count} bytes allocated at offset ${cvtstr(offset)}\n`)
      return true
    }).pipe(Effect.catch((e) => Effect.sync(() => (print(`is_allocated failed: ${strerror(e)}\n`), false))))
}
