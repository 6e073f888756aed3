/**
 * Writes that meet an allocation held in the middle (a blkdebug breakpoint
 * at write_aio, iotest 046's situation): they wait for it, and once it is
 * resumed the held write completes before them (QEMU restarts the
 * dependent requests after the one that allocated has gone on); the data
 * of every write lands and the image stays consistent.
 */
import { Effect, Fiber } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { makeBlkdebugBreakpoints, makeBlkdebugStorage } from "@qcow2/storage/blkdebug"
import { createImage, openImage } from "../src/index.js"
import { qemuCheck, tempDir } from "./helpers.js"
import { memoryFiles } from "./memory.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

describe("writes into a cluster whose allocation is held", () => {
  for (const extendedL2 of [false, true]) {
    it(`${extendedL2 ? "extended L2" : "standard L2"}: wait, complete after the held write, and all land`, async () => {
      const lines: string[] = []
      const breakpoints = makeBlkdebugBreakpoints((line) => lines.push(line))
      const fs = memoryFiles((name, s) => (name === "held.qcow2" ? makeBlkdebugStorage(s, { rules: [] }, breakpoints) : s))
      const completed: string[] = []
      const write = (image: { write: (o: number, d: Uint8Array) => Effect.Effect<void, unknown> }, name: string, offset: number, length: number, value: number) =>
        Effect.forkChild(Effect.andThen(image.write(offset, new Uint8Array(length).fill(value)), Effect.sync(() => void completed.push(name))))
      await fs.run(
        Effect.gen(function* () {
          yield* createImage("held.qcow2", { size: 1 << 20, extendedL2 })
          const image = yield* openImage("held.qcow2")
          breakpoints.set("write_aio", "A")
          const a = yield* write(image, "A", 0x18000, 0x2000, 10)
          while (!breakpoints.isSuspended("A")) yield* Effect.yieldNow
          const b = yield* write(image, "B", 0x12000, 0x2000, 11)
          const c = yield* write(image, "C", 0x1c000, 0x2000, 12)
          for (let i = 0; i < 20; i++) yield* Effect.yieldNow
          expect(completed).toEqual([])
          breakpoints.resume("A")
          yield* Fiber.joinAll([a, b, c])
          expect(completed[0]).toBe("A")
          const back = new Uint8Array(0x10000)
          yield* image.read(0x10000, back)
          const expected = new Uint8Array(0x10000)
          expected.fill(11, 0x2000, 0x4000).fill(10, 0x8000, 0xa000).fill(12, 0xc000, 0xe000)
          expect(back).toEqual(expected)
          yield* image.flush()
        })
      )
      expect(lines).toEqual(["blkdebug: Suspended request 'A'\n", "blkdebug: Resuming request 'A'\n"])
      const file = tmp.path(`held-${extendedL2}.qcow2`)
      await fs.dump("held.qcow2", file)
      expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    })
  }
})
