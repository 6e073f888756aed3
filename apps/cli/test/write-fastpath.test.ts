/**
 * Concurrent writes through the library onto a real file, 32 in flight,
 * against qemu-io doing the same writes one by one: the image holds every
 * kind of cluster (owned data, data shared with a snapshot, zero,
 * compressed, unallocated), so writes into owned clusters take the direct
 * path (no metadata lock; whole pages written on the event loop's thread
 * by storage-node) while the others allocate, copy on write or decompress
 * beside them, several requests often in one cluster. qemu-img compare
 * must find both images identical and qemu-img check ours clean.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { envLayer, open } from "../src/env.js"
import { makeTempDir, qemu } from "./helpers.js"

const KiB = 1024
const size = 4096 * KiB

let dir = ""
let base = ""
beforeAll(() => {
  dir = makeTempDir("qcow2-write-fastpath-")
  base = path.join(dir, "base.qcow2")
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x11 0 2M", base])
  qemu(dir, "qemu-img", ["snapshot", "-c", "s1", base])
  // After the snapshot, 512k-1M is owned again (copied on write); 0-512k and 1M-2M stay shared.
  qemu(dir, "qemu-io", ["-c", "write -P 0x22 512k 512k", "-c", "write -z 2M 256k", "-c", "write -c -P 0x33 3M 128k", base])
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

type Op =
  | { readonly kind: "write"; readonly offset: number; readonly length: number; readonly byte: number }
  | { readonly kind: "zero"; readonly offset: number; readonly length: number }

/** Mostly 4 KiB writes on 4 KiB boundaries (the benchmark's requests), some unaligned or longer ones, a few write-zeroes. */
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ page: fc.integer({ min: 0, max: size / 4096 - 1 }), byte: fc.integer({ min: 1, max: 255 }) }).map(({ page, byte }): Op => ({ kind: "write", offset: page * 4096, length: 4096, byte })) },
  {
    weight: 3,
    arbitrary: fc.record({ sector: fc.integer({ min: 0, max: size / 512 - 1 }), sectors: fc.integer({ min: 1, max: 160 }), byte: fc.integer({ min: 1, max: 255 }) })
      .map(({ sector, sectors, byte }): Op => ({ kind: "write", offset: sector * 512, length: Math.min(sectors * 512, size - sector * 512), byte }))
  },
  {
    weight: 1,
    arbitrary: fc.record({ sector: fc.integer({ min: 0, max: size / 512 - 1 }), sectors: fc.integer({ min: 1, max: 64 }) })
      .map(({ sector, sectors }): Op => ({ kind: "zero", offset: sector * 512, length: Math.min(sectors * 512, size - sector * 512) }))
  }
)

/** Drops the ops overlapping an earlier one: concurrent requests on disjoint bytes have one outcome whatever their order. */
const disjoint = (ops: ReadonlyArray<Op>): ReadonlyArray<Op> => {
  const kept: Op[] = []
  for (const op of ops) if (kept.every((k) => op.offset + op.length <= k.offset || k.offset + k.length <= op.offset)) kept.push(op)
  return kept
}

const applyOurs = (file: string, ops: ReadonlyArray<Op>): Promise<void> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const image = yield* open(file, { readOnly: false })
        yield* Effect.all(
          ops.map((op) => (op.kind === "write" ? image.write(op.offset, new Uint8Array(op.length).fill(op.byte)) : image.writeZeroes(op.offset, op.length))),
          { concurrency: 32, discard: true }
        )
      })
    ).pipe(Effect.provide(envLayer)) as Effect.Effect<void>
  )

const applyTheirs = (file: string, ops: ReadonlyArray<Op>): void => {
  const commands = ops.flatMap((op) => ["-c", op.kind === "write" ? `write -P ${op.byte} ${op.offset} ${op.length}` : `write -z ${op.offset} ${op.length}`])
  qemu(dir, "qemu-io", [...commands, file])
}

describe("concurrent writes at depth 32 through the direct path", () => {
  it("leave the image qemu-io leaves, clean for qemu-img check", async () => {
    const ours = path.join(dir, "ours.qcow2")
    const theirs = path.join(dir, "theirs.qcow2")
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 96 }).map(disjoint), async (ops) => {
        fs.copyFileSync(base, ours)
        fs.copyFileSync(base, theirs)
        await applyOurs(ours, ops)
        applyTheirs(theirs, ops)
        expect(qemu(dir, "qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", ours, theirs], true).stdout).toBe("Images are identical.\n")
        const check = qemu(dir, "qemu-img", ["check", ours], true)
        expect(check.status, check.stdout + check.stderr).toBe(0)
        // The snapshot still holds what it held: direct writes never landed in its clusters.
        const snap = path.join(dir, "snap.raw")
        qemu(dir, "qemu-img", ["convert", "-l", "snapshot.name=s1", "-O", "raw", ours, snap])
        const bytes = fs.readFileSync(snap)
        expect(bytes.subarray(0, 2048 * KiB).every((b) => b === 0x11) && bytes.subarray(2048 * KiB).every((b) => b === 0)).toBe(true)
      }),
      { numRuns: 15 }
    )
  }, 120_000)
})
