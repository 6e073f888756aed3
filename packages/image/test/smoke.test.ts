import { readFileSync, writeFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { createImage, openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuCompare, qemuImg, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

describe("create, write, read against qemu-img", () => {
  it("an image created and written here passes qemu-img check and compares equal", async () => {
    const file = tmp.path("a.qcow2")
    const raw = tmp.path("a.raw")
    const size = 4 * 1024 * 1024
    const expected = new Uint8Array(size)
    await runNode(
      Effect.gen(function* () {
        yield* createImage(file, { size })
        const image = yield* openImage(file)
        const writes: Array<[number, number, number]> = [
          [0, 65536, 1],
          [100000, 5000, 2],
          [1 << 20, 300000, 3],
          [size - 1000, 1000, 4],
          [65536 - 10, 20, 5]
        ]
        for (const [offset, length, seed] of writes) {
          const data = pattern(length, seed)
          yield* image.write(offset, data)
          expected.set(data, offset)
        }
        const back = new Uint8Array(size)
        yield* image.read(0, back)
        expect(Buffer.compare(back, expected)).toBe(0)
      })
    )
    writeFileSync(raw, expected)
    const check = qemuCheck(file)
    expect(check.exitCode).toBe(0)
    expect(qemuCompare(file, raw, "-f", "qcow2", "-F", "raw")).toBe(0)
  })

  it("reads an image written by qemu-io byte for byte as qemu-img convert does", async () => {
    const file = tmp.path("q.qcow2")
    const raw = tmp.path("q.raw")
    qemuImg("create", "-f", "qcow2", file, "3M")
    execQemuIo(file, "write -P 0x11 0 64k", "write -P 0x22 100k 7k", "write -z 1M 128k", "write -P 0x33 2M 1M", "discard 2M 64k")
    qemuImg("convert", "-O", "raw", file, raw)
    const expected = readFileSync(raw)
    const got = await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true })
        const out = new Uint8Array(image.virtualSize)
        yield* image.read(0, out)
        return out
      })
    )
    expect(Buffer.compare(Buffer.from(got), expected)).toBe(0)
  })
})

import { execFileSync } from "node:child_process"
const execQemuIo = (file: string, ...commands: string[]) =>
  execFileSync("qemu-io", ["-f", "qcow2", ...commands.flatMap((c) => ["-c", c]), file], { encoding: "utf8" })
