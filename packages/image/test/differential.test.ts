import { execFileSync } from "node:child_process"
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { createImage, openImage } from "../src/index.js"
import { qemuCheck, qemuCompare, qemuImg, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

type Command =
  | { kind: "write"; offset: number; length: number; pattern: number }
  | { kind: "zero"; offset: number; length: number; unmap: boolean }
  | { kind: "discard"; offset: number; length: number }

const toQemuIo = (c: Command): string => {
  switch (c.kind) {
    case "write":
      return `write -P ${c.pattern} ${c.offset} ${c.length}`
    case "zero":
      return `write -z${c.unmap ? " -u" : ""} ${c.offset} ${c.length}`
    case "discard":
      return `discard ${c.offset} ${c.length}`
  }
}

interface Config {
  readonly name: string
  readonly options: string
  readonly create: Parameters<typeof createImage>[1]
  readonly size: number
  readonly backing?: boolean
}

const configs: Config[] = [
  { name: "v3 64k", options: "", create: {}, size: 4 << 20 },
  { name: "v2 64k", options: "compat=0.10", create: { compat: "0.10" }, size: 4 << 20 },
  { name: "v3 4k refcount_bits=1", options: "cluster_size=4096,refcount_bits=1", create: { clusterSize: 4096, refcountBits: 1 }, size: 1 << 20 },
  { name: "v3 extended L2", options: "extended_l2=on", create: { extendedL2: true }, size: 4 << 20 },
  { name: "v3 over qcow2 backing", options: "", create: {}, size: 4 << 20, backing: true },
  { name: "v2 over qcow2 backing", options: "compat=0.10", create: { compat: "0.10" }, size: 4 << 20, backing: true },
  { name: "v3 extended L2 over backing", options: "extended_l2=on", create: { extendedL2: true }, size: 4 << 20, backing: true }
]

let counter = 0

/** qemu-img map without host offsets, adjacent equal extents merged. */
const shape = (file: string) => {
  const entries = JSON.parse(qemuImg("map", "--output=json", file)) as Array<Record<string, unknown>>
  const out: Array<Record<string, unknown>> = []
  for (const { offset: _offset, ...rest } of entries) {
    const last = out[out.length - 1]
    if (last && last.depth === rest.depth && last.zero === rest.zero && last.data === rest.data && last.present === rest.present) {
      last.length = (last.length as number) + (rest.length as number)
    } else out.push({ ...rest })
  }
  return out
}

describe("the same random commands through qemu-io and through this library", () => {
  for (const config of configs) {
    it(`${config.name}: qemu-img compare identical, our image clean`, async () => {
      const command = (size: number): fc.Arbitrary<Command> => {
        const range = fc
          .tuple(fc.integer({ min: 0, max: size / 512 - 1 }), fc.integer({ min: 1, max: 1024 }), fc.boolean())
          .map(([sector, sectors, bytes]) => {
            // Mostly sector-aligned (qemu-io's common case), sometimes byte-granular.
            const offset = bytes ? sector * 512 + (sector % 511) : sector * 512
            const length = Math.max(1, Math.min(bytes ? sectors * 97 : sectors * 512, size - offset))
            return { offset, length }
          })
        return fc.oneof(
          { weight: 5, arbitrary: fc.tuple(range, fc.integer({ min: 1, max: 255 })).map(([r, pattern]) => ({ kind: "write" as const, ...r, pattern })) },
          { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ kind: "zero" as const, ...r, unmap })) },
          { weight: 2, arbitrary: range.map((r) => ({ kind: "discard" as const, ...r })) }
        )
      }
      await fc.assert(
        fc.asyncProperty(fc.array(command(config.size), { minLength: 1, maxLength: 20 }), async (commands) => {
          const id = counter++
          const theirs = tmp.path(`q${id}.qcow2`)
          const ours = tmp.path(`o${id}.qcow2`)
          const base = tmp.path(`b${id}.qcow2`)
          const backingArgs: string[] = []
          if (config.backing) {
            qemuImg("create", "-f", "qcow2", base, String(config.size))
            execFileSync("qemu-io", ["-c", "write -P 0xaa 0 1M", "-c", "write -P 0xbb 2M 1536k", base])
            backingArgs.push("-b", base, "-F", "qcow2")
          }
          qemuImg("create", "-f", "qcow2", ...(config.options ? ["-o", config.options] : []), ...backingArgs, theirs, String(config.size))
          execFileSync("qemu-io", [...commands.flatMap((c) => ["-c", toQemuIo(c)]), theirs], { encoding: "utf8" })
          await runNode(
            Effect.gen(function* () {
              yield* createImage(ours, { ...config.create, size: config.size, ...(config.backing ? { backingFile: base, backingFormat: "qcow2" as const } : {}) })
              const image = yield* openImage(ours)
              for (const c of commands) {
                switch (c.kind) {
                  case "write":
                    yield* image.write(c.offset, new Uint8Array(c.length).fill(c.pattern))
                    break
                  case "zero":
                    yield* image.writeZeroes(c.offset, c.length, { unmap: c.unmap })
                    break
                  case "discard":
                    yield* image.discard(c.offset, c.length)
                    break
                }
              }
            })
          )
          const detail = commands.map(toQemuIo).join("; ")
          expect(qemuCompare(theirs, ours), detail).toBe(0)
          expect(qemuCheck(ours), detail).toMatchObject({ exitCode: 0 })
          // Same allocation status (offsets aside): zero flags, data, depth.
          expect(shape(ours), detail).toEqual(shape(theirs))
        }),
        { numRuns: 8, endOnFailure: true }
      )
    })
  }
})
