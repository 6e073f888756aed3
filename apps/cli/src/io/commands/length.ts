import { Effect } from "effect"
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
  run: (ctx) => Effect.sync(() => (print(`${cvtstr(ctx.image.virtualSize)}\n`), true))
}
