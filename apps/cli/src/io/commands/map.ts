import { Effect } from "effect"
import { errnoText, strerror } from "../../errors.js"
import { print } from "../../output.js"
import { errorReport } from "../../progname.js"
import { cvtstr } from "../../text/sizes.js"
import { allocationRun } from "../allocation.js"
import type { IoCommand } from "../command.js"

/** `map`: one line per run of allocated or unallocated bytes over the whole image. */
export const mapCommand: IoCommand = {
  name: "map",
  needsFile: true,
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "prints the allocated areas of a file",
  run: (ctx) =>
    Effect.gen(function* () {
      // qemu-io asks for the length first, which fails once the image is out of service.
      if (ctx.image.outOfService?.() === true) {
        errorReport(`Failed to query image length: ${errnoText("ENOMEDIUM")}`)
        return false
      }
      const size = ctx.image.virtualSize
      let offset = 0
      while (offset < size) {
        const run = yield* allocationRun(ctx.image, offset, size - offset)
        let length = run.length
        while (offset + length < size) {
          const next = yield* allocationRun(ctx.image, offset + length, size - offset - length)
          if (next.allocated !== run.allocated) break
          length += next.length
        }
        print(
          `${cvtstr(length)} (0x${length.toString(16)}) bytes ${run.allocated ? "    allocated" : "not allocated"} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`
        )
        offset += length
      }
      return true
    }).pipe(Effect.catch((e) => Effect.sync(() => (errorReport(`Failed to get allocation status: ${strerror(e)}`), false))))
}
