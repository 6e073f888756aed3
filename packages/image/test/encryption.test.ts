import { execFileSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { Effect, Layer } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { layerNode } from "@qcow2/crypto/node"
import { createImage, openImage } from "../src/index.js"
import { nodeLayer, pattern, qemuImg, tempDir } from "./helpers.js"
import type { Scope } from "effect"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

const layer = Layer.mergeAll(nodeLayer, layerNode)
const run = <A, E>(effect: Effect.Effect<A, E, any>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect as Effect.Effect<A, E, Scope.Scope>).pipe(Effect.provide(layer)) as Effect.Effect<A, E>)
const secret = (pass: string) => ["--object", `secret,id=sec0,data=${pass}`]

const createEncrypted = (...args: string[]) => qemuImg("create", ...args)
const imageOpts = (file: string) => `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`
const enc = new TextEncoder()

/** Creates an encrypted image here (cheap key slots) and opens it for writing. */
const createHere = (file: string, format: "luks" | "aes", size: number) =>
  Effect.andThen(
    createImage(file, { size, encryption: { format, passphrase: enc.encode("s3cret"), slotIterations: 1000, masterKeyIterations: 1000 } }),
    openImage(file, { passphrase: enc.encode("s3cret") })
  )

/** Writes `model` to `raw`; qemu-img finds no errors in `file` and reads it as `raw`. */
const expectQemuReads = (file: string, raw: string, model: Uint8Array): void => {
  writeFileSync(raw, model)
  expect(execFileSync("qemu-img", ["check", ...secret("s3cret"), "--image-opts", imageOpts(file)], { encoding: "utf8" })).toContain("No errors")
  const cmp = execFileSync("qemu-img", ["compare", ...secret("s3cret"), "--image-opts", imageOpts(file), `driver=raw,file.filename=${raw}`], { encoding: "utf8" })
  expect(cmp).toContain("identical")
}

const readAll = (file: string, passphrase: string) =>
  run(
    Effect.gen(function* () {
      const image = yield* openImage(file, { readOnly: true, passphrase: enc.encode(passphrase) })
      const out = new Uint8Array(image.virtualSize)
      yield* image.read(0, out)
      return out
    })
  )

describe("encrypted images, both ways with qemu-img", () => {
  for (const format of ["luks", "aes"] as const) {
    it(`${format}: an image qemu-img made and qemu-io wrote reads identically here`, async () => {
      const file = tmp.path(`q-${format}.qcow2`)
      const raw = tmp.path(`q-${format}.raw`)
      createEncrypted("-f", "qcow2", ...secret("hunter2"), "-o", `encrypt.format=${format},encrypt.key-secret=sec0${format === "luks" ? ",encrypt.iter-time=10" : ""}`, file, "2M")
      execFileSync("qemu-io", [...secret("hunter2"), "--image-opts", "-c", "write -P 0x42 0 100k", "-c", "write -P 0x17 1M 3000", imageOpts(file)])
      execFileSync("qemu-img", ["convert", ...secret("hunter2"), "--image-opts", imageOpts(file), "-O", "raw", raw])
      const got = await readAll(file, "hunter2")
      expect(Buffer.compare(Buffer.from(got), readFileSync(raw))).toBe(0)
    })

    it(`${format}: an image created and written here reads identically in qemu-io, passes qemu-img check`, async () => {
      const file = tmp.path(`o-${format}.qcow2`)
      const raw = tmp.path(`o-${format}.raw`)
      const size = 2 << 20
      const model = new Uint8Array(size)
      await run(
        Effect.gen(function* () {
          const image = yield* createHere(file, format, size)
          for (const [offset, length, seed] of [[0, 70000, 1], [123, 7, 2], [1 << 20, 4096, 3], [size - 1000, 1000, 4], [65530, 20, 5]] as const) {
            const data = pattern(length, seed)
            yield* image.write(offset, data)
            model.set(data, offset)
          }
          yield* image.writeZeroes(200000, 5000)
          model.fill(0, 200000, 205000)
        })
      )
      expectQemuReads(file, raw, model)
      expect(Buffer.compare(Buffer.from(await readAll(file, "s3cret")), model)).toBe(0)
    })
  }

  for (const format of ["luks", "aes"] as const) {
    it(`${format}: one write of several MiB (encrypted piece by piece through a bounce buffer) reads back in qemu-img; the caller's bytes are left as they were`, async () => {
      const file = tmp.path(`big-${format}.qcow2`)
      const raw = tmp.path(`big-${format}.raw`)
      const size = 8 << 20
      const model = new Uint8Array(size)
      const data = pattern((5 << 20) + 3000, 9)
      const before = data.slice()
      const offset = (3 << 19) + 700
      await run(
        Effect.gen(function* () {
          const image = yield* createHere(file, format, size)
          yield* image.write(offset, data)
          // Rewritten in place (allocated clusters): the same pieces again.
          yield* image.write(offset + 4096, data.subarray(0, 3 << 20))
        })
      )
      expect(Buffer.compare(data, before)).toBe(0)
      model.set(data, offset)
      model.set(data.subarray(0, 3 << 20), offset + 4096)
      expectQemuReads(file, raw, model)
    })
  }

  it("luks: a wrong passphrase is a clear Encryption error", async () => {
    const file = tmp.path("wrong.qcow2")
    createEncrypted("-f", "qcow2", ...secret("right"), "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", file, "1M")
    const error = await run(Effect.flip(openImage(file, { readOnly: true, passphrase: enc.encode("wrong") })))
    expect(error).toMatchObject({ _tag: "ImageError", reason: "Encryption", message: "Invalid password, cannot unlock any keyslot" })
  })

  it("without a passphrase an encrypted image is refused as QEMU refuses it, but opens for info (no I/O) and refuses to read data", async () => {
    const file = tmp.path("locked.qcow2")
    createEncrypted("-f", "qcow2", ...secret("x"), "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", file, "1M")
    const refused = await run(Effect.flip(openImage(file, { readOnly: true })))
    expect(refused).toMatchObject({ reason: "Encryption", message: "Parameter 'encrypt.key-secret' is required for cipher" })
    const error = await run(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true, noIo: true })
        return yield* Effect.flip(image.read(0, new Uint8Array(512)))
      })
    )
    expect(error).toMatchObject({ reason: "Encryption" })
  })
})
