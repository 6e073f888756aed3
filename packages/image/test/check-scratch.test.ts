import { it } from "vitest"
import { Effect } from "effect"
import { openNodeFile } from "@qcow2/storage-node"
import { checkQcow2 } from "../src/check/index.js"

it("scratch", async () => {
  for (const spec of (process.env.FILES ?? "").split(",").filter(Boolean)) {
    const [file, mode] = spec.split(":")
    const repair = mode === "all" || mode === "leaks" ? mode : undefined
    const t0 = performance.now()
    const r = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const s = yield* openNodeFile(file!, { readOnly: repair === undefined })
          return yield* Effect.result(checkQcow2(s, repair ? { repair } : undefined))
        })
      )
    )
    console.log("elapsed ms", Math.round(performance.now() - t0))
    if (r._tag === "Failure") {
      console.log(file, "FAILED", r.failure.message, JSON.stringify((r.failure.cause as any)?.messages ?? r.failure.cause, null, 1))
    } else {
      const { messages, ...rest } = r.success
      console.log(file, JSON.stringify(rest), "\n" + messages.join("\n"))
    }
  }
})
