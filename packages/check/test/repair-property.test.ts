/**
 * Property: on qemu-img-made images damaged at random (refcounts zeroed or
 * garbled, refcount table entries pointing nowhere, past the end, past 2^53
 * or into other metadata, L1/L2 entries with a wrong COPIED flag or pointing
 * at clusters in use, leaks, a file cut short, random words in metadata),
 * our `check -r all` of one copy leaves no more corruptions, by `qemu-img
 * check`, than `qemu-img check -r all` of another copy, and it never fails
 * with a defect, hangs or grows the file without bound.
 *
 * FUZZ_RUNS (default 40) and FUZZ_SEED set the number of images and the seed;
 * FUZZ_KEEP=<dir> keeps a copy of every damaged image there.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect, Exit } from "effect"
import { openNodeFile } from "@qcow2/storage-node"
import { checkQcow2 } from "../src/index.js"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-repair-prop-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

const run = (cmd: string, args: ReadonlyArray<string>, timeout = 60_000) =>
  spawnSync(cmd, args, { encoding: "utf8", timeout, maxBuffer: 1 << 28 })

const must = (cmd: string, args: ReadonlyArray<string>): void => {
  const r = run(cmd, args)
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`)
}

// ---- the corpus ------------------------------------------------------------------------------

interface Base {
  readonly name: string
  readonly file: string
}

/** Images with data, a snapshot (unless refcounts are 1 bit wide) (shared clusters, refcount 2) and writes after it, in a few geometries. */
const makeBase = (name: string, opts: string, clusterSize: number, snapshot = true): Base => {
  const file = path.join(root, `${name}.qcow2`)
  const c = clusterSize
  must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", opts, file, String(128 * c)])
  must("qemu-io", ["-c", `write -P 1 0 ${6 * c}`, "-c", `write -P 2 ${40 * c} ${3 * c}`, "-c", `write -c -P 3 ${80 * c} ${c}`, file])
  if (snapshot) must("qemu-img", ["snapshot", "-c", "s1", file])
  must("qemu-io", ["-c", `write -P 4 ${2 * c} ${2 * c}`, "-c", `write -P 5 ${120 * c} ${2 * c}`, file])
  return { name, file }
}

let bases: ReadonlyArray<Base> = []

beforeAll(() => {
  bases = [
    makeBase("c64k", "cluster_size=65536", 65536),
    makeBase("c4k", "cluster_size=4096", 4096),
    makeBase("c4k-r1", "cluster_size=4096,refcount_bits=1", 4096, false),
    makeBase("c16k-r64", "cluster_size=16384,refcount_bits=64", 16384),
    makeBase("c512", "cluster_size=512", 512),
    makeBase("c2m-v2", "cluster_size=2097152,compat=0.10", 2097152)
  ]
}, 120_000)

// ---- reading and patching the file ----------------------------------------------------------

class Img {
  readonly buf: Buffer
  constructor(readonly file: string) {
    this.buf = fs.readFileSync(file)
  }
  u64(o: number): bigint {
    return o + 8 <= this.buf.length ? this.buf.readBigUInt64BE(o) : 0n
  }
  put64(o: number, v: bigint): void {
    this.grow(o + 8)
    this.buf.writeBigUInt64BE(BigInt.asUintN(64, v), o)
  }
  private grow(end: number): void {
    if (end > this.buf.length) throw new Error("write past the end of the test buffer")
  }
  get clusterBits(): number {
    return this.buf.readUInt32BE(20)
  }
  get cs(): number {
    return 2 ** this.clusterBits
  }
  get refcountOrder(): number {
    return this.buf.readUInt32BE(4) >= 3 ? this.buf.readUInt32BE(96) : 4
  }
  get l1Offset(): number {
    return Number(this.u64(40))
  }
  get l1Size(): number {
    return this.buf.readUInt32BE(36)
  }
  get reftableOffset(): number {
    return Number(this.u64(48))
  }
  l1Entries(): Array<{ at: number; l2: number }> {
    const out = []
    for (let i = 0; i < this.l1Size; i++) {
      const at = this.l1Offset + 8 * i
      const l2 = Number(this.u64(at) & 0x00fffffffffffe00n)
      if (l2 !== 0) out.push({ at, l2 })
    }
    return out
  }
  /** Positions of non-zero L2 entries of the active L1 and their host offsets (0 for compressed). */
  l2Entries(): Array<{ at: number; offset: number; compressed: boolean }> {
    const out = []
    for (const { l2 } of this.l1Entries()) {
      for (let i = 0; i < this.cs / 8; i++) {
        const at = l2 + 8 * i
        const e = this.u64(at)
        if (e === 0n) continue
        const compressed = (e & (1n << 62n)) !== 0n
        out.push({ at, offset: compressed ? 0 : Number(e & 0x00fffffffffffe00n), compressed })
      }
    }
    return out
  }
  refblocks(): Array<{ at: number; offset: number }> {
    const out = []
    for (let i = 0; i < 16; i++) {
      const at = this.reftableOffset + 8 * i
      const o = Number(this.u64(at) & ~0x1ffn)
      if (o !== 0) out.push({ at, offset: o })
    }
    return out
  }
  /** Byte position and bit shift of the refcount of `cluster` in the first refcount block. */
  refcountSlot(cluster: number): { byte: number; shift: number; bits: number } | undefined {
    const block = this.refblocks()[0]
    if (block === undefined) return undefined
    const bits = 1 << this.refcountOrder
    const bitPos = cluster * bits
    if (bitPos >= this.cs * 8) return undefined
    return { byte: block.offset + Math.floor(bitPos / 8), shift: bitPos % 8, bits }
  }
  setRefcount(cluster: number, value: bigint): void {
    const slot = this.refcountSlot(cluster)
    if (slot === undefined) return
    const { byte, shift, bits } = slot
    if (bits >= 8) {
      const v = BigInt.asUintN(bits, value)
      for (let k = 0; k < bits / 8; k++) this.buf[byte + k] = Number((v >> BigInt(bits - 8 - 8 * k)) & 0xffn)
      return
    }
    const mask = ((1 << bits) - 1) << shift
    this.buf[byte] = (this.buf[byte]! & ~mask) | ((Number(BigInt.asUintN(bits, value)) << shift) & mask)
  }
  save(): void {
    fs.writeFileSync(this.file, this.buf)
  }
}

// ---- damage -------------------------------------------------------------------------------

type Damage =
  | { readonly kind: "refcount"; readonly pick: number; readonly value: bigint }
  | { readonly kind: "leak"; readonly pick: number; readonly value: bigint }
  | { readonly kind: "reftable"; readonly pick: number; readonly target: number }
  | { readonly kind: "l2copied"; readonly pick: number }
  | { readonly kind: "l2overlap"; readonly pick: number; readonly target: number }
  | { readonly kind: "l1"; readonly pick: number; readonly target: number }
  | { readonly kind: "word"; readonly pick: number; readonly slot: number; readonly value: bigint }
  | { readonly kind: "truncate"; readonly pick: number }

const damage: fc.Arbitrary<Damage> = fc.oneof(
  fc.record({ kind: fc.constant("refcount" as const), pick: fc.nat(), value: fc.oneof(fc.constant(0n), fc.bigInt({ min: 0n, max: 3n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })) }),
  fc.record({ kind: fc.constant("leak" as const), pick: fc.nat(), value: fc.bigInt({ min: 1n, max: 3n }) }),
  fc.record({ kind: fc.constant("reftable" as const), pick: fc.nat(), target: fc.nat(7) }),
  fc.record({ kind: fc.constant("l2copied" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("l2overlap" as const), pick: fc.nat(), target: fc.nat(4) }),
  fc.record({ kind: fc.constant("l1" as const), pick: fc.nat(), target: fc.nat(3) }),
  fc.record({ kind: fc.constant("word" as const), pick: fc.nat(), slot: fc.nat(63), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
  fc.record({ kind: fc.constant("truncate" as const), pick: fc.nat() })
)

const pickOf = <A>(items: ReadonlyArray<A>, n: number): A | undefined => (items.length === 0 ? undefined : items[n % items.length])

/** Applies one damage to the image in memory; the file is cut short directly. */
function apply(img: Img, d: Damage): void {
  const cs = img.cs
  const fileClusters = Math.ceil(img.buf.length / cs)
  const l2 = img.l2Entries()
  const metadata = [0, img.l1Offset, img.reftableOffset, ...img.refblocks().map((r) => r.offset), ...img.l1Entries().map((e) => e.l2)]
  switch (d.kind) {
    case "refcount": {
      const used = [...metadata, ...l2.filter((e) => !e.compressed).map((e) => e.offset)].map((o) => Math.floor(o / cs))
      const c = pickOf(used, d.pick)
      if (c !== undefined) img.setRefcount(c, d.value)
      return
    }
    case "leak":
      img.setRefcount(fileClusters + (d.pick % 8) - 2, d.value)
      return
    case "reftable": {
      const at = img.reftableOffset + 8 * (d.pick % 2)
      const targets = [0n, BigInt(img.refblocks()[0]?.offset ?? cs) + 512n, BigInt(fileClusters + 3 + (d.pick % 1000)) * BigInt(cs), 1n << 53n, 1n << 60n]
      const offsets = [...metadata, ...l2.map((e) => e.offset).filter((o) => o !== 0)]
      const v = d.target < targets.length ? targets[d.target]! : BigInt(pickOf(offsets, d.pick) ?? 0)
      img.put64(at, v)
      return
    }
    case "l2copied": {
      const e = pickOf(l2, d.pick)
      if (e !== undefined) img.put64(e.at, img.u64(e.at) ^ (1n << 63n))
      return
    }
    case "l2overlap": {
      const e = pickOf(l2, d.pick)
      if (e === undefined) return
      const others = l2.filter((x) => !x.compressed && x.offset !== 0).map((x) => x.offset)
      const target = d.target < metadata.length && d.target < 4 ? metadata[d.target]! : (pickOf(others, d.pick >> 3) ?? 0)
      img.put64(e.at, (img.u64(e.at) & (1n << 63n)) | BigInt(target))
      return
    }
    case "l1": {
      const l1 = img.l1Entries()
      const e = pickOf(l1, d.pick)
      if (e === undefined) return
      const copied = img.u64(e.at) & (1n << 63n)
      const targets = [copied ^ (1n << 63n) | BigInt(e.l2), copied | BigInt(img.reftableOffset), copied | BigInt(pickOf(l2, d.pick)?.offset ?? 0), copied | (1n << 54n)]
      img.put64(e.at, targets[d.target % targets.length]!)
      return
    }
    case "word": {
      const base = pickOf(metadata, d.pick)!
      img.put64(base + 8 * d.slot, d.value)
      return
    }
    case "truncate":
      return
  }
}

// ---- running both repairs ---------------------------------------------------------------------

/** Corruptions by `qemu-img check` (Infinity when it cannot check the image at all). */
const corruptionsOf = (file: string): number => {
  const r = run("qemu-img", ["check", "--output=json", file])
  if (!r.stdout.trim()) return Number.POSITIVE_INFINITY
  const j = JSON.parse(r.stdout) as Record<string, number>
  return (j["corruptions"] ?? 0) + (j["check-errors"] ?? 0)
}

const ourRepair = (file: string): Promise<Exit.Exit<unknown, unknown>> =>
  Effect.runPromiseExit(
    Effect.scoped(Effect.flatMap(openNodeFile(file, { readOnly: false }), (storage) => checkQcow2(storage, { repair: "all" }))).pipe(
      Effect.timeout("60 seconds")
    )
  )

interface Tally {
  images: number
  corruptBefore: number
  oursLeftCorrupt: number
  qemuLeftCorrupt: number
  worse: Array<string>
}

const tally: Tally = { images: 0, corruptBefore: 0, oursLeftCorrupt: 0, qemuLeftCorrupt: 0, worse: [] }

describe("check -r all against qemu-img check -r all on damaged images", () => {
  it(
    "ours leaves no more corruptions than qemu-img's repair, and never crashes, hangs or grows the file without bound",
    async () => {
      let n = 0
      await fc.assert(
        fc.asyncProperty(fc.nat(), fc.array(damage, { minLength: 1, maxLength: 3 }), async (which, damages) => {
          const base = bases[which % bases.length]!
          const id = `${n++}-${base.name}`
          const file = path.join(root, `${id}.qcow2`)
          fs.copyFileSync(base.file, file)
          const img = new Img(file)
          for (const d of damages) apply(img, d)
          img.save()
          const cut = damages.find((d) => d.kind === "truncate")
          if (cut !== undefined) fs.truncateSync(file, img.cs * (1 + (cut.pick % Math.ceil(img.buf.length / img.cs))))
          // FUZZ_KEEP=<dir> keeps the damaged images, e.g. to compare the CLI on them.
          if (process.env.FUZZ_KEEP) fs.copyFileSync(file, path.join(process.env.FUZZ_KEEP, `${id}.qcow2`))
          const ours = `${file}.ours`
          const theirs = `${file}.qemu`
          fs.copyFileSync(file, ours)
          fs.copyFileSync(file, theirs)
          const sizeBefore = fs.statSync(file).size
          run("qemu-img", ["check", "-r", "all", theirs])
          const exit = await ourRepair(ours)
          const detail = `${id} ${JSON.stringify(damages, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v))}`
          // A CheckError (qemu-img's "Check failed") is an answer; a defect, an interruption or a timeout is not.
          if (Exit.isFailure(exit)) {
            const failure = exit.cause.reasons.find((r) => r._tag === "Fail")
            expect(failure?.error, detail).toMatchObject({ _tag: "CheckError" })
          }
          // Growth is bounded by what the image's tables can name (QEMU grows the file for a refblock past its end too).
          expect(fs.statSync(ours).size, detail).toBeLessThanOrEqual(Math.max(sizeBefore, fs.statSync(theirs).size) + 64 * img.cs)
          const before = corruptionsOf(file)
          const mine = corruptionsOf(ours)
          const qemus = corruptionsOf(theirs)
          tally.images++
          if (before > 0) tally.corruptBefore++
          if (mine > 0) tally.oursLeftCorrupt++
          if (qemus > 0) tally.qemuLeftCorrupt++
          if (mine > qemus) tally.worse.push(`${detail}: ours ${mine}, qemu-img ${qemus}`)
        }),
        { numRuns: Number(process.env.FUZZ_RUNS ?? 40), seed: Number(process.env.FUZZ_SEED ?? 4242), endOnFailure: true }
      ).finally(() => console.log(`repair property: ${JSON.stringify(tally, null, 1)}`))
      // Every image is tried (figures for the whole corpus), then the comparison is judged.
      expect(tally.worse).toEqual([])
    },
    1_800_000
  )
})
