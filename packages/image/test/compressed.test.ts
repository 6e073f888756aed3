import { readFileSync, writeFileSync } from "node:fs"
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { makeCompressionPool } from "@qcow2/compress/node"
import { createImage, openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuCompare, qemuImg, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

/** Compressible content: runs of repeated text with some noise. */
const text = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  const words = ["qcow2 ", "cluster ", "refcount ", "backing ", "zlib ", "zstd ", "\n"]
  const noise = pattern(length, seed)
  let p = 0
  let i = seed
  while (p < length) {
    const w = words[i++ % words.length]
    for (let k = 0; k < w.length && p < length; k++) out[p++] = w.charCodeAt(k)
    if (noise[p % length] < 8 && p < length) out[p++] = noise[p % length]
  }
  return out
}

let counter = 0

describe("compressed writes, checked by qemu-img", () => {
  for (const compressionType of ["zlib", "zstd"] as const) {
    for (const clusterSize of [512, 4096, 65536, 2 << 20]) {
      it(`${compressionType}, ${clusterSize}-byte clusters: random sequences over compressed clusters match the model; qemu-img check clean, compare equal`, async () => {
        const size = Math.max(16 * clusterSize, 1 << 20)
        await fc.assert(
          fc.asyncProperty(
            fc.array(
              fc.record({
                kind: fc.constantFrom("compress", "compress", "write", "zero", "discard"),
                cluster: fc.integer({ min: 0, max: size / clusterSize - 1 }),
                offset: fc.integer({ min: 0, max: size - 1 }),
                length: fc.integer({ min: 1, max: 3 * clusterSize }),
                seed: fc.integer({ min: 1, max: 1 << 30 })
              }),
              { minLength: 1, maxLength: 30 }
            ),
            async (ops) => {
              const id = counter++
              const file = tmp.path(`c${id}.qcow2`)
              const raw = tmp.path(`c${id}.raw`)
              const model = new Uint8Array(size)
              await runNode(
                Effect.gen(function* () {
                  yield* createImage(file, { size, clusterSize, compressionType })
                  const image = yield* openImage(file)
                  for (const op of ops) {
                    const length = Math.min(op.length, size - op.offset)
                    switch (op.kind) {
                      case "compress": {
                        const guest = op.cluster * clusterSize
                        const status = yield* image.blockStatus(guest, clusterSize)
                        if (status.data) break // QEMU refuses compressed writes over data, so do we
                        const data = op.seed % 5 === 0 ? pattern(clusterSize, op.seed) : text(clusterSize, op.seed)
                        yield* image.writeCompressed(guest, data)
                        model.set(data, guest)
                        break
                      }
                      case "write": {
                        const data = pattern(length, op.seed)
                        yield* image.write(op.offset, data)
                        model.set(data, op.offset)
                        break
                      }
                      case "zero":
                        yield* image.writeZeroes(op.offset, length, { unmap: op.seed % 2 === 0 })
                        model.fill(0, op.offset, op.offset + length)
                        break
                      case "discard": {
                        yield* image.discard(op.offset, length)
                        const first = Math.ceil(op.offset / clusterSize) * clusterSize
                        const last = Math.floor((op.offset + length) / clusterSize) * clusterSize
                        if (first < last) model.fill(0, first, last)
                        break
                      }
                    }
                  }
                  const back = new Uint8Array(size)
                  yield* image.read(0, back)
                  expect(Buffer.compare(back, model)).toBe(0)
                })
              )
              expect(qemuCheck(file), JSON.stringify(ops)).toMatchObject({ exitCode: 0 })
              writeFileSync(raw, model)
              expect(qemuCompare(file, raw, "-F", "raw")).toBe(0)
            }
          ),
          { numRuns: clusterSize >= 65536 ? 4 : 8 }
        )
      })
    }
  }

  for (const compressionType of ["zlib", "zstd"] as const) {
    it(`${compressionType}: whole requests through a pool's compressClusters (mixed clusters, an unaligned image end) read back, qemu-img check clean, compare equal`, async () => {
      const clusterSize = 4096
      const size = 40 * clusterSize + 1536
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ first: fc.integer({ min: 0, max: 40 }), count: fc.integer({ min: 1, max: 12 }), seed: fc.integer({ min: 1, max: 1 << 30 }) }), { minLength: 1, maxLength: 8 }),
          async (requests) => {
            const id = counter++
            const file = tmp.path(`batch${id}.qcow2`)
            const raw = tmp.path(`batch${id}.raw`)
            const model = new Uint8Array(size)
            await runNode(
              Effect.gen(function* () {
                yield* createImage(file, { size, clusterSize, compressionType })
                const pool = yield* makeCompressionPool({ workers: 2 })
                const image = yield* openImage(file, { compressClusters: pool.compressClusters })
                const written = new Set<number>()
                for (const r of requests) {
                  const clusters = Array.from({ length: r.count }, (_, k) => r.first + k).filter((c) => c * clusterSize < size)
                  // Compressed writes cannot overwrite data (QEMU refuses them), so each request covers fresh clusters.
                  if (clusters.some((c) => written.has(c))) continue
                  const offset = clusters[0] * clusterSize
                  const length = Math.min(size, (clusters[clusters.length - 1] + 1) * clusterSize) - offset
                  const data = new Uint8Array(length)
                  for (let at = 0; at < length; at += clusterSize) {
                    const k = at / clusterSize
                    const piece = (r.seed + k) % 3 === 0 ? pattern(clusterSize, r.seed + k) : text(clusterSize, r.seed + k)
                    data.set(piece.subarray(0, Math.min(clusterSize, length - at)), at)
                  }
                  yield* image.writeCompressed(offset, data)
                  model.set(data, offset)
                  for (const c of clusters) written.add(c)
                }
                const back = new Uint8Array(size)
                yield* image.read(0, back)
                expect(Buffer.compare(back, model)).toBe(0)
              })
            )
            expect(qemuCheck(file), JSON.stringify(requests)).toMatchObject({ exitCode: 0 })
            writeFileSync(raw, model)
            expect(qemuCompare(file, raw, "-F", "raw")).toBe(0)
          }
        ),
        { numRuns: 6 }
      )
    })
  }

  it("clusters compressed here are stored compressed (qemu-img map shows no offset), sizes near QEMU's", async () => {
    const size = 64 * 65536
    const file = tmp.path("size.qcow2")
    const raw = tmp.path("size.raw")
    const content = new Uint8Array(size)
    for (let c = 0; c < 64; c++) content.set(text(65536, c + 1), c * 65536)
    writeFileSync(raw, content)
    await runNode(
      Effect.gen(function* () {
        yield* createImage(file, { size })
        const image = yield* openImage(file)
        yield* image.writeCompressed(0, content)
      })
    )
    const ref = tmp.path("ref.qcow2")
    qemuImg("convert", "-c", "-O", "qcow2", "-f", "raw", raw, ref)
    const ours = require("node:fs").statSync(file).size
    const theirs = require("node:fs").statSync(ref).size
    expect(Math.abs(ours - theirs) / theirs).toBeLessThan(0.05)
    const map = JSON.parse(qemuImg("map", "--output=json", file))
    expect(map.every((e: { data: boolean; offset?: number }) => e.data && e.offset === undefined)).toBe(true)
    expect(qemuCompare(file, raw, "-F", "raw")).toBe(0)
  })
})

describe("reads of images qemu-img compressed", () => {
  for (const compressionType of ["zlib", "zstd"] as const) {
    for (const clusterSize of [4096, 65536]) {
      it(`${compressionType}, ${clusterSize}-byte clusters: many reads in flight at once (packed batches, partial clusters; buffers reused between them) read what qemu-img convert -O raw reads`, async () => {
        const clusters = 96
        const size = clusters * clusterSize
        const source = new Uint8Array(size)
        for (let c = 0; c < clusters; c++) {
          // Text compresses, noise does not (stored as data), zeros are left out.
          const piece = c % 5 === 0 ? pattern(clusterSize, c) : c % 7 === 0 ? new Uint8Array(clusterSize) : text(clusterSize, c)
          source.set(piece, c * clusterSize)
        }
        const id = counter++
        const input = tmp.path(`src${id}.raw`)
        const file = tmp.path(`src${id}.qcow2`)
        const expected = tmp.path(`src${id}.out`)
        writeFileSync(input, source)
        qemuImg("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${clusterSize},compression_type=${compressionType}`, input, file)
        qemuImg("convert", "-O", "raw", file, expected)
        const truth = readFileSync(expected)
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 12 * clusterSize }), aligned: fc.boolean() }), {
              minLength: 1,
              maxLength: 40
            }),
            async (reads) => {
              const requests = reads.map((r) => {
                const offset = r.aligned ? r.offset - (r.offset % clusterSize) : r.offset
                return { offset, length: Math.min(r.aligned ? Math.ceil(r.length / clusterSize) * clusterSize : r.length, size - offset) }
              })
              const results = await runNode(
                Effect.gen(function* () {
                  const image = yield* openImage(file, { readOnly: true })
                  return yield* Effect.forEach(
                    requests,
                    (r) => {
                      const into = new Uint8Array(r.length)
                      return Effect.as(image.read(r.offset, into), into)
                    },
                    { concurrency: 16 }
                  )
                })
              )
              requests.forEach((r, k) => expect(Buffer.compare(results[k], truth.subarray(r.offset, r.offset + r.length)), JSON.stringify(r)).toBe(0))
            }
          ),
          { numRuns: 15 }
        )
      })
    }
  }
})
