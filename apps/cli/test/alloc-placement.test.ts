/**
 * Where allocation puts things, against qemu-io: the same write sequence,
 * run by qemu-io on one copy of a fresh image and by `qcow2 io` on another,
 * with small clusters (512 B – 4 KiB) and every refcount width, so that runs
 * cross refcount block boundaries, new refcount blocks are made and the
 * refcount table grows. Both images must pass `qemu-img check` with no
 * errors or leaks, hold the bytes of a raw model (`qemu-img compare`), and
 * have the same layout: the same `qemu-img map` and the same image end
 * offset (QEMU's qcow2-refcount.c placement: alloc_refcount_block,
 * qcow2_refcount_area).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

const IMAGE_SIZE = 4 * 1024 * 1024
/** Cases per property (ALLOC_PLACEMENT_RUNS=200 for a longer hunt). */
const RUNS = Number(process.env.ALLOC_PLACEMENT_RUNS ?? 12)

interface Op {
  readonly kind: "write" | "zero" | "unmap" | "discard"
  readonly offset: number
  readonly length: number
  readonly pattern: number
}

const command = (op: Op): string => {
  switch (op.kind) {
    case "write":
      return `write -P ${op.pattern} ${op.offset} ${op.length}`
    case "zero":
      return `write -z ${op.offset} ${op.length}`
    case "unmap":
      return `write -z -u ${op.offset} ${op.length}`
    case "discard":
      return `discard ${op.offset} ${op.length}`
  }
}

/** Offsets and lengths in 512-byte sectors (qemu-io's discard and zero requests stay aligned then). */
const opArb = (kinds: ReadonlyArray<Op["kind"]>): fc.Arbitrary<Op> =>
  fc
    .record({
      kind: fc.constantFrom(...kinds),
      sector: fc.integer({ min: 0, max: IMAGE_SIZE / 512 - 1 }),
      sectors: fc.integer({ min: 1, max: 256 }),
      pattern: fc.integer({ min: 1, max: 255 })
    })
    .map(({ kind, sector, sectors, pattern }) => ({
      kind,
      offset: sector * 512,
      length: Math.min(sectors, IMAGE_SIZE / 512 - sector) * 512,
      pattern
    }))

const caseArb = (kinds: ReadonlyArray<Op["kind"]>, clusterBits = fc.integer({ min: 9, max: 12 })) =>
  fc.record({
    clusterBits,
    refcountBits: fc.constantFrom(1, 2, 4, 8, 16, 32, 64),
    ops: fc.array(opArb(kinds), { minLength: 1, maxLength: 24 })
  })

/**
 * The raw image the write sequence should leave. A discard drops whole
 * clusters only (QEMU ignores the partial ones at either end); they read
 * as zeroes then (no backing file).
 */
const model = (ops: ReadonlyArray<Op>, clusterSize: number): Uint8Array => {
  const bytes = new Uint8Array(IMAGE_SIZE)
  for (const op of ops) {
    if (op.kind !== "discard") {
      bytes.fill(op.kind === "write" ? op.pattern : 0, op.offset, op.offset + op.length)
      continue
    }
    const start = Math.ceil(op.offset / clusterSize) * clusterSize
    const end = Math.floor((op.offset + op.length) / clusterSize) * clusterSize
    if (end > start) bytes.fill(0, start, end)
  }
  return bytes
}

let dir: string
let run = 0

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("alloc-placement-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Runs one case; returns a description of the first difference, or undefined. */
const check = (clusterBits: number, refcountBits: number, ops: ReadonlyArray<Op>, extraOptions = ""): string | undefined => {
  const name = `c${run++}`
  const theirs = `${name}-qemu.qcow2`
  const ours = `${name}-ours.qcow2`
  const raw = `${name}.raw`
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${2 ** clusterBits},refcount_bits=${refcountBits}${extraOptions}`, theirs, `${IMAGE_SIZE}`])
  fs.copyFileSync(path.join(dir, theirs), path.join(dir, ours))
  fs.writeFileSync(path.join(dir, raw), model(ops, 2 ** clusterBits))
  const commands = ops.flatMap((op) => ["-c", command(op)])
  qemu(dir, "qemu-io", ["-f", "qcow2", ...commands, theirs])
  const io = qcow2(dir, ["io", "-f", "qcow2", ...commands, ours])
  if (io.status !== 0) return `qcow2 io failed (${io.status}): ${io.stderr}`
  const checked = qemu(dir, "qemu-img", ["check", "--output=json", ours], true)
  const report = JSON.parse(checked.stdout) as { "check-errors"?: number; corruptions?: number; leaks?: number; "image-end-offset"?: number }
  if (checked.status !== 0 || (report.corruptions ?? 0) + (report.leaks ?? 0) + (report["check-errors"] ?? 0) !== 0) {
    return `qemu-img check: ${checked.stdout}${checked.stderr}`
  }
  const compared = qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, ours], true)
  if (compared.status !== 0) return `qemu-img compare with the model: ${compared.stdout}${compared.stderr}`
  const reference = JSON.parse(qemu(dir, "qemu-img", ["check", "--output=json", theirs]).stdout) as { "image-end-offset"?: number }
  if (report["image-end-offset"] !== reference["image-end-offset"]) {
    return `image end offset ${report["image-end-offset"]}, qemu-io's ${reference["image-end-offset"]}`
  }
  const header = (file: string) => fs.readFileSync(path.join(dir, file)).subarray(0, 2 ** clusterBits).toString("hex")
  if (header(ours) !== header(theirs)) return "the header differs (refcount table or L1 table placed elsewhere)"
  const map = (file: string) => qemu(dir, "qemu-img", ["map", "--output=json", file]).stdout
  if (map(ours) !== map(theirs)) return `qemu-img map differs:\n${map(ours)}\nqemu-io's:\n${map(theirs)}`
  for (const file of [ours, raw]) fs.rmSync(path.join(dir, file))
  return undefined
}

describe("allocation placement against qemu-io (small clusters, every refcount width)", () => {
  it("writes: new refcount blocks and refcount table growth land where QEMU puts them", () => {
    fc.assert(
      fc.property(caseArb(["write"]), ({ clusterBits, refcountBits, ops }) => {
        expect(check(clusterBits, refcountBits, ops)).toBeUndefined()
      }),
      { numRuns: RUNS }
    )
  })

  it("writes mixed with write-zeroes and discards: freed clusters are reused as QEMU reuses them", () => {
    fc.assert(
      fc.property(caseArb(["write", "write", "zero", "discard"]), ({ clusterBits, refcountBits, ops }) => {
        expect(check(clusterBits, refcountBits, ops)).toBeUndefined()
      }),
      { numRuns: RUNS }
    )
  })

  it("extended L2: write-zeroes pieces (subcluster bits, zero flag, refused pieces written) and allocations as QEMU's", () => {
    fc.assert(
      fc.property(caseArb(["write", "zero", "unmap", "discard"], fc.integer({ min: 14, max: 16 })), ({ clusterBits, refcountBits, ops }) => {
        expect(check(clusterBits, refcountBits, ops, ",extended_l2=on")).toBeUndefined()
      }),
      { numRuns: RUNS }
    )
  })

  it("a table that has to grow twice (512-byte clusters, 64-bit refcounts, the whole image written)", () => {
    const ops: Op[] = []
    for (let offset = 0; offset < IMAGE_SIZE; offset += 64 * 1024) ops.push({ kind: "write", offset, length: 64 * 1024, pattern: 1 + ((offset >> 16) % 251) })
    expect(check(9, 64, ops)).toBeUndefined()
    // The refcount table (one cluster at first) holds room for 8192 clusters after the first move.
    const moved = fs.readFileSync(path.join(dir, `c${run - 1}-qemu.qcow2`)).subarray(56, 60)
    expect(new DataView(moved.buffer, moved.byteOffset, 4).getUint32(0)).toBeGreaterThan(2)
  })
})
