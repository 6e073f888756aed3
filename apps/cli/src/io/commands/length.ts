import { Effect } from "effect"
import { errnoText } from "../../errors.js"
import { print } from "../../output.js"
import { cvtstr } from "../../text/sizes.js"
import type { IoCommand } from "../command.js"

/** `length`: the virtual size, human-readable. */
export const lengthCommand: IoCommand = {
  name: "length",
  needsFile: true,
  alias: "l",
  argmin: 0,
  argmax: 0,
  optstring: "",
  oneline: "gets the length of the current file",
  run: (ctx) =>
    Effect.sync(() => {
      // qemu-io's blk_getlength fails once the image is out of service.
      if (ctx.image.outOfService?.() === true) {
        print(`getlength: ${errnoText("ENOMEDIUM")}\n`)
        return false
      }
      print(`${cvtstr(ctx.image.virtualSize)}\n`)
      return true
    })
}
