import { writeFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { makeCrashRecorder } from "@qcow2/storage/testing"
import type { CrashRecorder } from "@qcow2/storage/testing"
import type { CreateOptions } from "../src/index.js"
import { createImage, openImage } from "../src/index.js"
import { pattern, qemuCheck, tempDir } from "./helpers.js"
import { memoryFiles } from "./memory.js"

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

interface FlushPoint {
  /** Recorded operations when the image-level flush returned. */
  readonly operations: number
  readonly model: Uint8Array
  /** Index into `touches` at that time. */
  readonly touchIndex: number
}

const cases: Array<{ name: string; create: CreateOptions; size: number }> = [
  { name: "64k clusters", create: {}, size: 2 << 20 },
  { name: "4k clusters, refcount_bits=1 (refcount blocks and table grow)", create: { clusterSize: 4096, refcountBits: 1 }, size: 1 << 20 },
  { name: "512 B clusters (L1 and refcount table growth)", create: { clusterSize: 512 }, size: 512 << 10 },
  { name: "extended L2", create: { extendedL2: true }, size: 2 << 20 }
]

describe("crash consistency: cut the workload anywhere", () => {
  for (const c of cases) {
    it(`${c.name}: no corruption at any cut (leaks allowed), flushed bytes intact`, async () => {
      let recorder: CrashRecorder | undefined
      let initial: Uint8Array | undefined
      const fs = memoryFiles((name, storage) => {
        if (name !== "img.qcow2" || initial === undefined || recorder !== undefined) return storage
        recorder = makeCrashRecorder(storage, { initial })
        return recorder.storage
      })
      const rand = random(c.size + 1)
      const model = new Uint8Array(c.size)
      const flushes: FlushPoint[] = []
      const touches: Array<{ offset: number; length: number }> = []
      const stepLog: string[] = []
      await fs.run(
        Effect.gen(function* () {
          yield* createImage("img.qcow2", { ...c.create, size: c.size })
          // Record from a clean, created image on.
          const created = fs.files.get("img.qcow2")!
          const bytes = new Uint8Array(yield* created.size())
          yield* created.read(0, bytes)
          initial = bytes
          const image = yield* openImage("img.qcow2")
          flushes.push({ operations: 0, model: model.slice(), touchIndex: 0 })
          for (let step = 0; step < 60; step++) {
            stepLog.push(`ops ${recorder!.operations().length}: step ${step}`)
            const op = rand(10)
            const length = 1 + rand(rand(3) === 0 ? 200000 : 9000)
            const offset = rand(c.size - length)
            if (op < 6) {
              const data = pattern(length, step + 1)
              yield* image.write(offset, data)
              model.set(data, offset)
              touches.push({ offset, length })
            } else if (op < 7) {
              yield* image.writeZeroes(offset, length, { unmap: rand(2) === 0 })
              model.fill(0, offset, offset + length)
              touches.push({ offset, length })
            } else if (op < 8) {
              yield* image.discard(offset, length)
              const cs = c.create.clusterSize ?? 65536
              const first = Math.ceil(offset / cs) * cs
              const last = Math.floor((offset + length) / cs) * cs
              if (first < last) model.fill(0, first, last)
              touches.push({ offset, length })
            } else {
              yield* image.flush()
              flushes.push({ operations: recorder!.operations().length, model: model.slice(), touchIndex: touches.length })
            }
          }
          yield* image.flush()
          flushes.push({ operations: recorder!.operations().length, model: model.slice(), touchIndex: touches.length })
        })
      )
      const rec = recorder!
      const total = rec.operations().length
      expect(total).toBeGreaterThan(20)
      const cuts = new Set<number>()
      for (let i = 0; i <= total; i += Math.max(1, Math.floor(total / 24))) cuts.add(i)
      cuts.add(total)
      let checked = 0
      for (const cut of cuts) {
        for (const keep of (process.env.KEEPS ? JSON.parse(process.env.KEEPS) : ["none", "all", { seed: cut + 2, sector: 512 }]) as Array<"none" | "all" | { seed: number; sector?: number }>) {
          const state = rec.stateAt(cut, { keepUnflushed: keep })
          const file = tmp.path(`crash-${checked}.qcow2`)
          writeFileSync(file, state)
          const check = qemuCheck(file)
          if ((check.corruptions ?? 0) !== 0 || (check["check-errors"] ?? 0) !== 0) {
            if (process.env.CRASHDEBUG) {
              require("node:fs").copyFileSync(file, "/tmp/crashfail.qcow2")
              const ops = rec.operations()
              for (let i = Math.max(0, cut - 30); i < Math.min(ops.length, cut + 3); i++) {
                const o = ops[i] as { _tag: string; offset?: number; data?: Uint8Array; durable?: number }
                console.log(i, o._tag, o.offset, o.data?.length, o.durable, o.data ? Buffer.from(o.data.subarray(0, 16)).toString("hex") : "")
              }
              console.log(stepLog.join("\n"))
            }
            throw new Error(`cut ${cut}/${total} keep=${JSON.stringify(keep)}: qemu-img check reports ${JSON.stringify(check)}`)
          }
          // The last image-level flush that completed before the cut.
          const flushed = [...flushes].reverse().find((f) => f.operations <= rec.durableAt(cut))!
          const later = touches.slice(flushed.touchIndex)
          const back = yield_read(file, c.size)
          const got = await back
          for (let b = 0; b < c.size; b++) {
            if (got[b] === flushed.model[b]) continue
            if (later.some((t) => b >= t.offset && b < t.offset + t.length)) continue
            throw new Error(`cut ${cut}/${total} keep=${JSON.stringify(keep)}: flushed byte ${b} changed (${flushed.model[b]} -> ${got[b]})`)
          }
          checked++
        }
      }
      expect(checked).toBeGreaterThan(40)
    }, 240_000)
  }
})

/** Reads the whole guest content of an image file with our reader. */
async function yield_read(file: string, size: number): Promise<Uint8Array> {
  const { runNode } = await import("./helpers.js")
  return runNode(
    Effect.gen(function* () {
      const image = yield* openImage(file, { readOnly: true })
      const out = new Uint8Array(size)
      yield* image.read(0, out)
      return out
    })
  )
}
