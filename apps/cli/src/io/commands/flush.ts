import { Effect } from "effect"
import { eprint } from "../../output.js"
import type { IoCommand } from "../command.js"

/** `flush`: writes cached metadata and flushes the storage. */
export const flushCommand: IoCommand = {
  name: "flush",
  alias: "f",
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "flush all in-core file state to disk",
  run: (ctx) =>
    ctx.image.flush().pipe(
      Effect.as(true),
      Effect.catch((e) => Effect.sync(() => (eprint(`qcow2: ${e.message}\n`), false)))
    )
}
