import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { openNodeFile } from "../src/index.js"

const MiB = 1024 * 1024

describe("seekExtent (SEEK_DATA / SEEK_HOLE)", () => {
  it("finds a sparse file's data and holes as lseek does, and the end of the file as a hole", async () => {
    const dir = await fs.mkdtemp(nodePath.join(os.tmpdir(), "qcow2-seek-"))
    try {
      const path = nodePath.join(dir, "sparse.raw")
      // Data at [1 MiB, 2 MiB) and [5 MiB, 5 MiB + 4 KiB); holes elsewhere; 8 MiB long.
      const handle = await fs.open(path, "w")
      await handle.write(new Uint8Array(MiB).fill(1), 0, MiB, MiB)
      await handle.write(new Uint8Array(4096).fill(2), 0, 4096, 5 * MiB)
      await handle.truncate(8 * MiB)
      await handle.close()
      const answers = await Effect.runPromise(
        Effect.scoped(
          Effect.gen(function* () {
            const storage = yield* openNodeFile(path, { readOnly: true })
            const seek = storage.seekExtent!
            return [
              yield* seek(0, "data"),
              yield* seek(MiB, "data"),
              yield* seek(MiB, "hole"),
              yield* seek(2 * MiB, "data"),
              yield* seek(5 * MiB + 4096, "data"),
              yield* seek(5 * MiB + 4096, "hole"),
              yield* seek(8 * MiB, "data")
            ]
          })
        )
      )
      expect(answers).toEqual([MiB, MiB, 2 * MiB, 5 * MiB, 8 * MiB, 5 * MiB + 4096, 8 * MiB])
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  })

  it("fails with reason Closed once the file is closed", async () => {
    const dir = await fs.mkdtemp(nodePath.join(os.tmpdir(), "qcow2-seek-"))
    try {
      const path = nodePath.join(dir, "small.raw")
      await fs.writeFile(path, new Uint8Array(4096).fill(3))
      const storage = await Effect.runPromise(Effect.scoped(openNodeFile(path, { readOnly: true })))
      const failure = await Effect.runPromise(Effect.flip(storage.seekExtent!(0, "data")))
      expect(failure.reason).toBe("Closed")
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  })
})
