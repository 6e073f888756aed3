import { writeFileSync } from "node:fs"
import { Effect, Exit, Scope } from "effect"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import type { CreateOptions, Image } from "../src/index.js"
import { createImage, openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuCompare, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

type Op =
  | { kind: "write"; offset: number; length: number; seed: number }
  | { kind: "zero"; offset: number; length: number; unmap: boolean }
  | { kind: "discard"; offset: number; length: number }
  | { kind: "flush" }
  | { kind: "reopen" }

interface Config {
  readonly name: string
  readonly size: number
  readonly create: CreateOptions
  readonly backing?: boolean
}

const configs: Config[] = [
  { name: "v3 64k", size: 3 << 20, create: {} },
  { name: "v2 64k", size: 3 << 20, create: { compat: "0.10" } },
  { name: "v3 512B refcount_bits=1", size: 256 << 10, create: { clusterSize: 512, refcountBits: 1 } },
  { name: "v3 4k refcount_bits=64", size: 1 << 20, create: { clusterSize: 4096, refcountBits: 64 } },
  { name: "v3 4k refcount_bits=2", size: 1 << 20, create: { clusterSize: 4096, refcountBits: 2 } },
  { name: "v3 2M clusters", size: 8 << 20, create: { clusterSize: 2 << 20 } },
  { name: "v3 extended L2 64k", size: 3 << 20, create: { extendedL2: true } },
  { name: "v3 extended L2 16k", size: 1 << 20, create: { extendedL2: true, clusterSize: 16384 } },
  { name: "v3 lazy refcounts", size: 2 << 20, create: { lazyRefcounts: true } },
  { name: "v3 over raw backing", size: 2 << 20, create: {}, backing: true },
  { name: "v2 over raw backing", size: 2 << 20, create: { compat: "0.10" }, backing: true },
  { name: "v3 extended L2 over backing", size: 2 << 20, create: { extendedL2: true }, backing: true },
  { name: "v3 external data file", size: 2 << 20, create: { dataFile: "DATA" } },
  { name: "v3 odd size", size: (1 << 20) + 3 * 512, create: { clusterSize: 4096 } }
]

const opArb = (size: number): fc.Arbitrary<Op> => {
  const range = fc
    .tuple(fc.integer({ min: 0, max: size - 1 }), fc.integer({ min: 1, max: Math.min(size, 300_000) }))
    .map(([offset, length]) => ({ offset, length: Math.min(length, size - offset) }))
  return fc.oneof(
    { weight: 6, arbitrary: fc.tuple(range, fc.integer({ min: 1, max: 1 << 30 })).map(([r, seed]) => ({ kind: "write" as const, ...r, seed })) },
    { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ kind: "zero" as const, ...r, unmap })) },
    { weight: 2, arbitrary: range.map((r) => ({ kind: "discard" as const, ...r })) },
    { weight: 1, arbitrary: fc.constant({ kind: "flush" as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: "reopen" as const }) }
  )
}

let counter = 0

describe("random operation sequences against an in-memory model", () => {
  for (const config of configs) {
    it(`${config.name}: reads match the model after every step; qemu-img check is clean and compare equal`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb(config.size), { minLength: 1, maxLength: 25 }), async (ops) => {
          const id = counter++
          const file = tmp.path(`m${id}.qcow2`)
          const rawFile = tmp.path(`m${id}.raw`)
          const model = new Uint8Array(config.size)
          const backingContent = config.backing ? pattern(config.size, id + 7) : undefined
          const create: CreateOptions = { ...config.create, size: config.size }
          if (backingContent) {
            const backing = tmp.path(`b${id}.raw`)
            writeFileSync(backing, backingContent)
            Object.assign(create, { backingFile: backing, backingFormat: "raw" })
            model.set(backingContent)
          }
          if (config.create.dataFile) Object.assign(create, { dataFile: tmp.path(`d${id}.raw`) })
          const cs = config.create.clusterSize ?? 65536
          const v2 = config.create.compat === "0.10"
          await runNode(
            Effect.gen(function* () {
              yield* createImage(file, create)
              // Each open gets its own scope: a reopen closes the previous
              // image first, as two opens of one image read-write would
              // conflict (QEMU's image locking refuses the second).
              let scope = yield* Scope.make()
              let image: Image = yield* Scope.provide(scope)(openImage(file))
              for (const op of ops) {
                switch (op.kind) {
                  case "write": {
                    const data = pattern(op.length, op.seed)
                    yield* image.write(op.offset, data)
                    model.set(data, op.offset)
                    break
                  }
                  case "zero":
                    yield* image.writeZeroes(op.offset, op.length, { unmap: op.unmap })
                    model.fill(0, op.offset, op.offset + op.length)
                    break
                  case "discard": {
                    yield* image.discard(op.offset, op.length)
                    const end = op.offset + op.length
                    const first = Math.ceil(op.offset / cs) * cs
                    const last = end === config.size ? end : Math.floor(end / cs) * cs
                    if (first < last) {
                      // v2 over a backing file: QEMU refuses discards (they would expose the backing file).
                      if (!(v2 && backingContent)) model.fill(0, first, last)
                    }
                    break
                  }
                  case "flush":
                    yield* image.flush()
                    break
                  case "reopen":
                    yield* Scope.close(scope, Exit.void)
                    scope = yield* Scope.make()
                    image = yield* Scope.provide(scope)(openImage(file))
                    break
                }
                const back = new Uint8Array(config.size)
                yield* image.read(0, back)
                if (Buffer.compare(back, model) !== 0) {
                  let at = 0
                  while (back[at] === model[at]) at++
                  throw new Error(`content differs from the model at ${at} after ${JSON.stringify(op)}`)
                }
              }
              yield* image.flush()
              yield* Scope.close(scope, Exit.void)
            })
          )
          const check = qemuCheck(file)
          expect(check, JSON.stringify(ops)).toMatchObject({ exitCode: 0 })
          writeFileSync(rawFile, model)
          expect(qemuCompare(file, rawFile, "-f", "qcow2", "-F", "raw"), JSON.stringify(ops)).toBe(0)
        }),
        { numRuns: 6 }
      )
    })
  }
})
