import { execFileSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import * as fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { layerNode } from "@qcow2/crypto/node"
import { createLuksImage, openImage, probeFormat } from "../src/index.js"
import { memoryFiles } from "./memory.js"
import { nodeLayer, pattern, qemuImg, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

const enc = new TextEncoder()
const layer = Layer.mergeAll(nodeLayer, layerNode)
const run = <A, E>(effect: Effect.Effect<A, E, any>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect as Effect.Effect<A, E, Scope.Scope>).pipe(Effect.provide(layer)) as Effect.Effect<A, E>)
const secret = ["--object", "secret,id=s0,data=hunter2"]
const opts = (file: string) => `driver=luks,file.filename=${file},key-secret=s0`
/** Fixed PBKDF2 counts: fast and independent of the machine's load. */
const fast = { slotIterations: 1000, masterKeyIterations: 1000 }

const qemuCreate = (...args: string[]) => qemuImg("create", ...args)

describe("raw LUKS volumes (QEMU's luks driver)", () => {
  it("a volume qemu-img made and qemu-io wrote reads here as qemu-img convert reads it", async () => {
    const file = tmp.path("q.luks")
    const raw = tmp.path("q.raw")
    qemuCreate("-f", "luks", ...secret, "-o", "key-secret=s0,iter-time=10", file, "1M")
    execFileSync("qemu-io", [...secret, "--image-opts", "-c", "write -P 0x42 0 100k", "-c", "write -P 0x17 700001 3000", opts(file)])
    execFileSync("qemu-img", ["convert", ...secret, "--image-opts", opts(file), "-O", "raw", raw])
    const got = await run(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true, passphrase: enc.encode("hunter2") })
        expect(image.format).toBe("luks")
        expect(image.virtualSize).toBe(1 << 20)
        const out = new Uint8Array(image.virtualSize)
        yield* image.read(0, out)
        return out
      })
    )
    expect(Buffer.compare(Buffer.from(got), readFileSync(raw))).toBe(0)
  })

  it("a volume created and written here (unaligned requests) reads identically in qemu-img", async () => {
    const file = tmp.path("o.luks")
    const raw = tmp.path("o.raw")
    const model = new Uint8Array(1 << 20)
    const writes: Array<[number, Uint8Array]> = [
      [0, pattern(4096, 1)],
      [100, pattern(5000, 2)],
      [511, pattern(2, 3)],
      [65_537, pattern(70_000, 4)],
      [(1 << 20) - 3, pattern(3, 5)]
    ]
    await run(
      Effect.gen(function* () {
        yield* createLuksImage(file, { size: 1 << 20, passphrase: enc.encode("hunter2"), cipherAlg: "aes-128", cipherMode: "cbc", ivgenAlg: "essiv", ivgenHashAlg: "sha256", ...fast })
        const image = yield* openImage(file, { passphrase: enc.encode("hunter2") })
        yield* image.writeZeroes(0, 1 << 20)
        for (const [offset, data] of writes) {
          yield* image.write(offset, data)
          model.set(data, offset)
        }
        yield* image.flush()
      })
    )
    execFileSync("qemu-img", ["convert", ...secret, "--image-opts", opts(file), "-O", "raw", raw])
    expect(Buffer.compare(readFileSync(raw), Buffer.from(model))).toBe(0)
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", file], { encoding: "utf8" }))
    expect(info.format).toBe("luks")
    expect(info["format-specific"].data["cipher-alg"]).toBe("aes-128")
    expect(info["format-specific"].data["ivgen-alg"]).toBe("essiv")
  })

  it("is refused without its passphrase, and with a wrong one, unless the open does no I/O", async () => {
    const file = tmp.path("k.luks")
    await run(createLuksImage(file, { size: 65536, passphrase: enc.encode("right"), ...fast }))
    const outcome = (options: { passphrase?: string; noIo?: boolean }) =>
      run(
        Effect.exit(
          openImage(file, {
            readOnly: true,
            ...(options.passphrase !== undefined ? { passphrase: enc.encode(options.passphrase) } : {}),
            ...(options.noIo !== undefined ? { noIo: options.noIo } : {})
          })
        )
      )
    const missing = await outcome({})
    expect(missing._tag === "Failure" && String(missing.cause)).toContain("Parameter 'key-secret' is required for cipher")
    const wrong = await outcome({ passphrase: "wrong" })
    expect(wrong._tag === "Failure" && String(wrong.cause)).toContain("Invalid password, cannot unlock any keyslot")
    const headerOnly = await run(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true, noIo: true })
        const read = yield* Effect.exit(image.read(0, new Uint8Array(512)))
        return { size: image.virtualSize, read: read._tag, specific: yield* image.formatSpecific() }
      })
    )
    expect(headerOnly).toMatchObject({ size: 65536, read: "Failure" })
    expect(headerOnly.specific.luks?.keySlots[0]?.active).toBe(true)
  })

  it("a truncated header or a payload offset past the end of the file is a typed error, not a crash", async () => {
    const file = tmp.path("t.luks")
    await run(createLuksImage(file, { size: 4096, passphrase: enc.encode("pw"), ...fast }))
    const whole = readFileSync(file)
    writeFileSync(file, whole.subarray(0, 300))
    const short = await run(Effect.exit(openImage(file, { readOnly: true, noIo: true })))
    expect(short._tag === "Failure" && String(short.cause)).toContain("too short")
    const cut = tmp.path("c.luks")
    writeFileSync(cut, whole.subarray(0, 4096))
    const past = await run(Effect.exit(openImage(cut, { readOnly: true, noIo: true })))
    expect(past._tag === "Failure" && String(past.cause)).toContain("beyond the end of the file")
  })

  it("property: any sequence of unaligned writes and zero writes reads back as a byte model", async () => {
    const size = 64 * 1024
    const op = fc.record({
      kind: fc.constantFrom("write", "zero"),
      offset: fc.integer({ min: 0, max: size - 1 }),
      length: fc.integer({ min: 1, max: 9000 }),
      seed: fc.integer({ min: 1, max: 1000 })
    })
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
        const mem = memoryFiles()
        const model = new Uint8Array(size)
        const got = await mem.run(
          Effect.gen(function* () {
            yield* createLuksImage("v.luks", { size, passphrase: enc.encode("pw"), ...fast })
            const image = yield* openImage("v.luks", { passphrase: enc.encode("pw") })
            expect(yield* probeFormat(mem.files.get("v.luks")!)).toBe("luks")
            yield* image.writeZeroes(0, size)
            for (const o of ops) {
              const length = Math.min(o.length, size - o.offset)
              if (o.kind === "write") {
                const data = pattern(length, o.seed)
                yield* image.write(o.offset, data)
                model.set(data, o.offset)
              } else {
                yield* image.writeZeroes(o.offset, length)
                model.fill(0, o.offset, o.offset + length)
              }
            }
            const out = new Uint8Array(size)
            const start = ops[0]!.offset
            // An unaligned read that ends before the volume does, and a whole read.
            const part = new Uint8Array(Math.min(777, size - start))
            yield* image.read(start, part)
            expect(Buffer.compare(Buffer.from(part), Buffer.from(model.subarray(start, start + part.length)))).toBe(0)
            yield* image.read(0, out)
            return out
          }).pipe(Effect.provide(layerNode))
        )
        expect(Buffer.compare(Buffer.from(got), Buffer.from(model))).toBe(0)
      }),
      { numRuns: 12 }
    )
  })
})
