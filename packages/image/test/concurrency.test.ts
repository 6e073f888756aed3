import { writeFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import type { CreateOptions } from "../src/index.js"
import { createImage, openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuCompare, tempDir } from "./helpers.js"
import { jittered, memoryFiles } from "./memory.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

const random = (seed: number) => {
  let x = seed >>> 0 || 1
  return (n: number) => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return (x >>> 0) % n
  }
}

const cases: Array<{ name: string; create: CreateOptions; size: number; backing?: boolean }> = [
  { name: "64k clusters", create: {}, size: 4 << 20 },
  { name: "4k clusters, refcount_bits=1", create: { clusterSize: 4096, refcountBits: 1 }, size: 2 << 20 },
  { name: "512 B clusters (tiny L2 tables, many refcount blocks)", create: { clusterSize: 512 }, size: 1 << 20 },
  { name: "extended L2", create: { extendedL2: true }, size: 4 << 20 },
  { name: "over a backing file", create: { backingFile: "base.qcow2", backingFormat: "qcow2" }, size: 4 << 20, backing: true }
]

describe("hundreds of concurrent writes from one handle", () => {
  for (const c of cases) {
    it(`${c.name}: concurrent writes sharing clusters all land, image stays consistent`, async () => {
      const fs = memoryFiles((name, s) => jittered(s, name.length * 7919))
      const rand = random(c.size)
      const model = new Uint8Array(c.size)
      const id = c.name.replace(/[^a-z0-9]/gi, "_")
      await fs.run(
        Effect.gen(function* () {
          if (c.backing) {
            yield* createImage("base.qcow2", { size: c.size })
            const base = yield* openImage("base.qcow2")
            const content = pattern(c.size, 99)
            yield* base.write(0, content)
            yield* base.flush()
            model.set(content)
          }
          yield* createImage("img.qcow2", { ...c.create, size: c.size })
          const image = yield* openImage("img.qcow2")
          for (let round = 0; round < 3; round++) {
            // Writes in one round never overlap byte-wise, but many share clusters
            // (and L2 tables): the allocation races QEMU's in-flight list guards against.
            const taken = new Uint8Array(c.size)
            const writes: Array<{ offset: number; data: Uint8Array }> = []
            for (let i = 0; i < 200; i++) {
              const length = 1 + rand(rand(4) === 0 ? 70000 : 3000)
              const offset = rand(c.size - length)
              let free = true
              for (let b = offset; b < offset + length; b++) if (taken[b]) { free = false; break }
              if (!free) continue
              taken.fill(1, offset, offset + length)
              const data = pattern(length, round * 1000 + i + 1)
              writes.push({ offset, data })
              model.set(data, offset)
            }
            yield* Effect.all(
              writes.map((w) => image.write(w.offset, w.data)),
              { concurrency: "unbounded", discard: true }
            )
            const back = new Uint8Array(c.size)
            yield* image.read(0, back)
            expect(Buffer.compare(back, model)).toBe(0)
          }
          yield* image.flush()
        })
      )
      const file = tmp.path(`${id}.qcow2`)
      await fs.dump("img.qcow2", file)
      if (c.backing) {
        await fs.dump("base.qcow2", tmp.path("base.qcow2"))
      }
      expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
      const raw = tmp.path(`${id}.raw`)
      writeFileSync(raw, model)
      expect(qemuCompare(file, raw, "-F", "raw")).toBe(0)
    })
  }

  it("truly overlapping concurrent writes: every byte comes from one of its writers, image consistent", async () => {
    const fs = memoryFiles((_name, s) => jittered(s, 4242))
    const size = 1 << 20
    const rand = random(77)
    const writers: Array<{ offset: number; length: number; fill: number }> = []
    for (let i = 0; i < 300; i++) {
      const length = 1 + rand(20000)
      writers.push({ offset: rand(size - length), length, fill: (i % 254) + 1 })
    }
    const back = new Uint8Array(size)
    await fs.run(
      Effect.gen(function* () {
        yield* createImage("o.qcow2", { size, clusterSize: 4096 })
        const image = yield* openImage("o.qcow2")
        yield* Effect.all(
          writers.map((w) => image.write(w.offset, new Uint8Array(w.length).fill(w.fill))),
          { concurrency: "unbounded", discard: true }
        )
        yield* image.read(0, back)
        yield* image.flush()
      })
    )
    for (let b = 0; b < size; b++) {
      const candidates = writers.filter((w) => b >= w.offset && b < w.offset + w.length).map((w) => w.fill)
      if (candidates.length === 0) expect(back[b]).toBe(0)
      else if (!candidates.includes(back[b])) throw new Error(`byte ${b} = ${back[b]}, not from any writer (${candidates})`)
    }
    const file = tmp.path("overlap.qcow2")
    await fs.dump("o.qcow2", file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })
})
