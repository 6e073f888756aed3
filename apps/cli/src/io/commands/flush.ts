import { Effect } from "effect"
import type { IoCommand } from "../command.js"

/** `flush`: writes cached metadata and flushes the storage; a failure only fails the command (qemu-io prints nothing). */
export const flushCommand: IoCommand = {
  name: "flush",
  needsFile: true,
  alias: "f",
  argmin: 0,
  argmax: 0,
  optstring: "",
  oneline: "flush all in-core file state to disk",
  run: (ctx) =>
    ctx.image.flush().pipe(
      Effect.as(true),
      Effect.catch(() => Effect.succeed(false))
    )
}
