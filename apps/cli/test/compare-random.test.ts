/**
 * `qcow2 compare` against `qemu-img compare` on random image pairs: an image
 * with random data, zero and discarded ranges over several of compare's 4 MiB
 * steps, against a copy (raw, or qcow2 with another cluster size) that may
 * have one byte changed and may be shorter or longer, with data past the
 * common part. The comparison reads ahead of its checks and reads small
 * extents together; whatever it does, its output (the first mismatching
 * offset, strict mode's first status mismatch, -p's progress lines, the size
 * warning) and exit code must be qemu-img's.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

const MiB = 1024 * 1024
const SIZE = 10 * MiB
/** Cases (COMPARE_RANDOM_RUNS=100 for a longer hunt). */
const RUNS = Number(process.env.COMPARE_RANDOM_RUNS ?? 10)

interface Op {
  readonly kind: "write" | "zero" | "discard"
  readonly offset: number
  readonly length: number
  readonly pattern: number
}

const op: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom("write", "write", "zero", "discard"),
  offset: fc.integer({ min: 0, max: SIZE / 512 - 1 }).map((s) => s * 512),
  length: fc.integer({ min: 1, max: 3 * 1024 }).map((s) => s * 512),
  pattern: fc.integer({ min: 1, max: 255 })
})

const command = (o: Op): string => {
  const length = Math.min(o.length, SIZE - o.offset)
  return o.kind === "write" ? `write -P ${o.pattern} ${o.offset} ${length}` : o.kind === "zero" ? `write -z ${o.offset} ${length}` : `discard ${o.offset} ${length}`
}

const pair = fc.record({
  clusterSize: fc.constantFrom(4096, 65536),
  ops: fc.array(op, { minLength: 1, maxLength: 24 }),
  copy: fc.constantFrom("raw", "qcow2"),
  /** The copy's size change, in 512-byte sectors (0: same size). */
  resize: fc.constantFrom(0, 0, -2048, 4096, 1),
  /** Data written in the longer copy's tail. */
  tailData: fc.boolean(),
  /** A byte of the copy changed at this offset, or none. */
  change: fc.option(fc.integer({ min: 0, max: SIZE - 1 }), { nil: undefined })
})

let dir: string
beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-compare-random-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe("compare on random image pairs, against qemu-img compare", () => {
  it("same output and exit code, plain, strict (-s) and with progress (-p)", () => {
    let n = 0
    fc.assert(
      fc.property(pair, (p) => {
        const d = path.join(dir, `case-${n++}`)
        fs.mkdirSync(d)
        qemu(d, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${p.clusterSize}`, "a.qcow2", String(SIZE)])
        qemu(d, "qemu-io", [...p.ops.flatMap((o) => ["-c", command(o)]), "a.qcow2"])
        const copy = p.copy === "raw" ? "b.raw" : "b.qcow2"
        const format = p.copy === "raw" ? "raw" : "qcow2"
        qemu(d, "qemu-img", ["convert", "-O", format, ...(format === "qcow2" ? ["-o", `cluster_size=${p.clusterSize === 4096 ? 65536 : 4096}`] : []), "a.qcow2", copy])
        const size = SIZE + p.resize * 512
        if (p.resize !== 0) qemu(d, "qemu-img", ["resize", "-q", "-f", format, ...(p.resize < 0 ? ["--shrink"] : []), copy, String(size)])
        if (p.resize > 0 && p.tailData) qemu(d, "qemu-io", ["-f", format, "-c", `write -P 7 ${size - 1024} 512`, copy])
        if (p.change !== undefined && p.change < size) qemu(d, "qemu-io", ["-f", format, "-c", `write -P 0xa5 ${p.change} 1`, copy])
        for (const flags of [[], ["-s"], ["-p"]]) {
          const args = ["compare", ...flags, "a.qcow2", copy]
          const theirs = qemu(d, "qemu-img", args, true)
          const ours = qcow2(d, args)
          expect({ args, out: ours.stdout, status: ours.status }).toEqual({ args, out: theirs.stdout, status: theirs.status })
        }
        fs.rmSync(d, { recursive: true, force: true })
      }),
      { numRuns: RUNS }
    )
  })
})

describe("compare with a read that fails (blkdebug), against qemu-img compare", () => {
  it("exit 4 with qemu-img's message; a mismatch before the failing range is still what is reported", () => {
    const d = path.join(dir, "read-error")
    fs.mkdirSync(d)
    qemu(d, "qemu-img", ["create", "-q", "-f", "qcow2", "e.qcow2", "8M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 5M 1M", "e.qcow2"])
    qemu(d, "qemu-img", ["convert", "-O", "raw", "e.qcow2", "same.raw"])
    fs.copyFileSync(path.join(d, "same.raw"), path.join(d, "changed.raw"))
    qemu(d, "qemu-io", ["-f", "raw", "-c", "write -P 9 4096 1", "changed.raw"])
    // Reads of the host sector that holds guest offset 5 MiB fail: the comparison reads it ahead of checking offset 4096.
    const host = (JSON.parse(qemu(d, "qemu-img", ["map", "--output=json", "e.qcow2"]).stdout) as Array<{ start: number; offset?: number }>).find((r) => r.start === 5 * MiB)!.offset!
    fs.writeFileSync(path.join(d, "err.conf"), `[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "${host / 512}"\n`)
    for (const other of ["same.raw", "changed.raw"]) {
      const args = ["compare", "blkdebug:err.conf:e.qcow2", other]
      const theirs = qemu(d, "qemu-img", args, true)
      const ours = qcow2(d, args)
      expect({ other, out: ours.stdout, err: ours.stderr.replace(/^qcow2:/, "qemu-img:"), status: ours.status }).toEqual({
        other,
        out: theirs.stdout,
        err: theirs.stderr,
        status: theirs.status
      })
      expect(theirs.status).toBe(other === "same.raw" ? 4 : 1)
    }
  })
})
