import { Effect } from "effect"
import { makeMemoryStorage } from "../src/index.js"
import { blockStorageConformance } from "../src/testing/index.js"

blockStorageConformance("memory", () => Effect.succeed(makeMemoryStorage()))

blockStorageConformance("memory from initial content", () => Effect.succeed(makeMemoryStorage()), {
  makeWithContent: (content) => Effect.succeed(makeMemoryStorage({ initial: content }))
})

blockStorageConformance("memory without discard", () => Effect.succeed(makeMemoryStorage({ discard: false })))

blockStorageConformance("memory read-only", () => Effect.succeed(makeMemoryStorage({ readOnly: true })), {
  readOnly: true,
  makeWithContent: (content) => Effect.succeed(makeMemoryStorage({ initial: content, readOnly: true }))
})
