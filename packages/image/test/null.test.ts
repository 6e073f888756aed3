/**
 * makeNullImage, QEMU's null-co device: the CLI tests hold its output to
 * qemu-img/qemu-io; here its contract as an Image.
 */
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { makeNullImage, NULL_CO_NAME } from "../src/index.js"

describe("null-co", () => {
  it("reads zeros whatever was written, reports zero extents with read-zeroes and unallocated ones without", async () => {
    const image = makeNullImage({ size: 1000, readZeroes: true, readOnly: false, format: "null-co" })
    expect([image.location, image.virtualSize]).toEqual([NULL_CO_NAME, 1024])
    const into = new Uint8Array(512).fill(0xab)
    await Effect.runPromise(Effect.andThen(image.write(0, new Uint8Array(512).fill(7)), image.read(0, into)))
    expect(into.every((b) => b === 0)).toBe(true)
    const status = await Effect.runPromise(image.blockStatus(512, 512))
    expect([status.length, status.present, status.zero, status.data, status.hostOffset]).toEqual([512, true, true, false, 512])
    const plain = makeNullImage({ size: 1024, readZeroes: false, readOnly: false, format: "null-co" })
    const unallocated = await Effect.runPromise(plain.blockStatus(0, 1024))
    expect([unallocated.present, unallocated.zero, unallocated.data, unallocated.hostOffset]).toEqual([false, false, false, undefined])
  })

  it("refuses writes when read-only, requests past the end, resize and compressed writes", async () => {
    const failure = (effect: Effect.Effect<void, { readonly reason: string; readonly message: string }>) =>
      Effect.runPromise(Effect.flip(effect)).then((e) => [e.reason, e.message])
    const readOnly = makeNullImage({ size: 4096, readZeroes: true, readOnly: true, format: "null-co" })
    expect(await failure(readOnly.write(0, new Uint8Array(1)))).toEqual(["ReadOnly", "Block node is read-only"])
    expect((await failure(readOnly.read(4000, new Uint8Array(512))))[0]).toBe("InvalidArgument")
    expect(await failure(readOnly.truncate(8192))).toEqual(["Unsupported", "Image format driver does not support resize"])
    expect((await failure(readOnly.writeCompressed(0, new Uint8Array(4096))))[0]).toBe("Unsupported")
  })
})
