/**
 * Damaged images, qcow2 vs qemu-img/qemu-io (generator and rules in
 * damaged.ts). A fixed-seed property test damages small qemu-made images
 * (v2, v3, backing file, compressed, snapshot, extended L2, refcount_bits
 * 1/64, persistent bitmap) and runs info, check, convert -O raw, io read
 * (hex dump and read -P), io write and check -r all with both tools, each on
 * its own copy. The qcow2 CLI must never print "internal error", crash, hang
 * or use more than MAX_RSS_KIB; where both read, the bytes are the same;
 * where qemu-io refuses a write (or marks the image corrupt), we refuse too
 * and change nothing but the corrupt bit; info (0 / non-zero) and check
 * (0 / 2 / 3 / failure) exit classes match.
 *
 * Findings of a KNOWN class do not fail the property (they are counted and
 * printed); each class also has a minimal reproduction below marked
 * `it.fails` until the engine fixes it: when you fix one, flip `it.fails`
 * to `it` and delete its KNOWN entry.
 *
 * DAMAGED_RUNS / DAMAGED_SEED change the property's runs and seed;
 * DAMAGED_DUMP=file appends every finding as JSON lines; DAMAGED_KEEP keeps
 * the temporary directory.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BASES, applyDamage, buildBases, buildShared, compare, damageArb, parseLayout, patched, runCase, type Finding, type Layout, type Op, type Patch } from "./damaged.js"
import { buildBundle, makeTempDir } from "./helpers.js"

// A run takes ~1 s on an idle 2-core machine and 3-5 s on a busy one: at most RUNS runs, and none started after
// BUDGET_MS (fast-check's interruptAfterTimeLimit; the runs done still count).
const RUNS = Number(process.env.DAMAGED_RUNS ?? 40)
const BUDGET_MS = Number(process.env.DAMAGED_BUDGET_MS ?? 90_000)
const SEED = Number(process.env.DAMAGED_SEED ?? 20261206)

interface Observed {
  readonly base: string
  readonly what: ReadonlyArray<string>
  readonly finding: Finding
}

/**
 * Known classes (the engine's, not the generator's): a finding matching one
 * is reported but does not fail the property. Each has a reproduction below.
 */
const KNOWN: ReadonlyArray<{ readonly id: string; readonly match: (o: Observed) => boolean }> = [
  // L1 or refcount table past the end of the file: QEMU opens (missing entries read as 0), we refuse to open
  // (deliberately: only check opens such images leniently).
  { id: "l1-table-past-eof", match: (o) => /(Active L1 table|Reference count table) .* lies past the end of the file/.test(o.finding.detail) },
  // nb_snapshots > 0 with snapshots_offset 0: QEMU opens (offset 0 is aligned; check reports the entries), we refuse.
  { id: "snapshot-table-offset-0", match: (o) => /info-exit|check-exit/.test(o.finding.kind) && /Snapshot table offset invalid \(0\)/.test(o.finding.detail) },
  // autoclear bit 1 (raw external data) without incompatible bit 2: format's decodeImageHeader refuses, so info fails;
  // QEMU refuses it at open too ("data-file-raw requires a data file") except in qemu-img info, which shows the image.
  { id: "data-file-raw-without-data-file (info)", match: (o) => o.finding.kind === "info-exit" && /raw external data autoclear bit/.test(o.finding.detail) }
]

const classOf = (o: Observed): string | undefined => KNOWN.find((k) => k.match(o))?.id

let dir = ""
let bases = new Map<string, Uint8Array>()
const layouts = new Map<string, Layout>()

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-damaged-")
  bases = buildBases(dir)
  for (const [file, bytes] of bases) layouts.set(file, parseLayout(bytes))
}, 180_000)

afterAll(() => {
  if (dir !== "" && process.env.DAMAGED_KEEP === undefined) fs.rmSync(dir, { recursive: true, force: true })
})

const describeFinding = (o: Observed): string => `[${o.base}] ${o.what.join("; ")}\n    ${o.finding.op} ${o.finding.kind}: ${o.finding.detail}`

describe("damaged images, qcow2 vs QEMU", () => {
  it(
    "property: no crash, no internal error, no hang or runaway memory; QEMU's bytes and verdicts",
    async () => {
      const unknown: Observed[] = []
      const known = new Map<string, number>()
      let n = 0
      await fc.assert(
        fc.asyncProperty(fc.nat(BASES.length - 1), fc.array(damageArb, { minLength: 1, maxLength: 3 }), async (baseIndex, damages) => {
          const base = BASES[baseIndex]!
          const bytes = bases.get(base.file)!
          const layout = layouts.get(base.file)!
          const patches: Patch[] = []
          const what: string[] = []
          for (const d of damages) {
            const r = applyDamage(bytes, layout, d)
            patches.push(...r.patches)
            what.push(r.what)
          }
          const image = patched(bytes, patches)
          const run = n++
          const result = await runCase(dir, `c${run}`, image)
          for (const finding of compare(image, result)) {
            const o: Observed = { base: base.file, what, finding }
            const id = classOf(o)
            if (id === undefined) unknown.push(o)
            else known.set(id, (known.get(id) ?? 0) + 1)
            if (process.env.DAMAGED_DUMP !== undefined) {
              fs.appendFileSync(
                process.env.DAMAGED_DUMP,
                JSON.stringify({ run, class: id, base: base.file, what, patches: patches.map((p) => ({ at: p.at, hex: Buffer.from(p.bytes).toString("hex") })), finding }) + "\n"
              )
            }
          }
          return true
        }),
        { seed: SEED, numRuns: RUNS, endOnFailure: true, interruptAfterTimeLimit: BUDGET_MS, markInterruptAsFailure: false }
      )
      console.log(`damaged images: ${n} runs`)
      if (known.size > 0) console.log(`known classes seen (findings): ${[...known].map(([k, v]) => `${k} ${v}`).join(", ")}`)
      expect(unknown.map(describeFinding)).toEqual([])
    },
    900_000
  )
})

// ---------------------------------------------------------------- reproductions

type Tool = readonly [tool: "qemu-img" | "qemu-io", ...args: string[]]

interface Repro {
  readonly id: string
  /** Steps that make `image.qcow2` (back.raw, a 1 MiB raw file of 0x5a, exists). */
  readonly make: ReadonlyArray<Tool>
  /** [file offset, big-endian bytes as hex]. */
  readonly patch: ReadonlyArray<readonly [number, string]>
  readonly ops: ReadonlyArray<Op>
}

const create = (...args: string[]): Tool => ["qemu-img", "create", "-q", "-f", "qcow2", ...args, "image.qcow2", "1M"]
const write = (...cmds: string[]): Tool => ["qemu-io", ...cmds.flatMap((c) => ["-c", c]), "image.qcow2"]

/**
 * Minimal reproductions, one per class; fresh 64 KiB-cluster images have the
 * reftable at 0x10000, a refblock at 0x20000, L1 at 0x30000, L2 at 0x40000,
 * data from 0x50000. The property's rules decide (`compare`): no findings.
 */
const REPROS: ReadonlyArray<Repro & { readonly fixed?: true }> = [
  // qcow2: "internal error: refcount table entry 1 points past 2^53" (exit 1) / qemu-img info 0, check 2 "ERROR refcount block 1 is outside image"
  { id: "reftable-entry-past-2^53", make: [create(), write("write -P 1 0 128k")], patch: [[0x10008, "8000000000020000"]], ops: ["info", "check"], fixed: true },
  // was: internal error "The argument 'path' must be … without null bytes"; QEMU opens "back" (ENOENT, exit 1).
  // Fixed in format/header.ts: the name ends at the first NUL, as QEMU reads it.
  {
    fixed: true,
    id: "backing-name-nul (fixed)",
    make: [create("-b", "back.raw", "-F", "raw"), write("write -P 1 0 64k")],
    // the name "back.raw" sits after the extensions; the generator finds it with parseLayout, here it is at 0x210
    patch: [[0x214, "00"]],
    ops: ["check", "convert", "read"]
  },
  // qemu-io: "write failed: Input/output error" (v2 has no corrupt bit); qcow2: "internal error: v2 images have no feature bits"
  { id: "v2-mark-corrupt", make: [create("-o", "compat=0.10"), write("write -P 1 0 128k")], patch: [[0x40008, "8000000000010000"]], ops: ["write"], fixed: true },
  // l1_size 65536 (512 KiB past the end): qemu-img info 0, check 2; qcow2: "Active L1 table … lies past the end of the file" (exit 1)
  { id: "l1-table-past-eof", make: [create(), write("write -P 1 0 128k")], patch: [[36, "00010000"]], ops: ["info", "check"] },
  // bitmap directory entry extra_data_size 0 -> 8: QEMU "Broken bitmap directory" on open (info 1, write refused); so do we now
  {
    id: "bitmaps-not-validated-on-open",
    make: [create(), write("write -P 1 0 64k"), ["qemu-img", "bitmap", "--add", "image.qcow2", "b0"]],
    // the directory is found at run time (see bitmapDirPatch)
    patch: [],
    ops: ["info", "write"],
    fixed: true
  },
  // refcount table entry 0 -> a refblock at 1 TiB: qemu-io "Marking image as corrupt: Preventing invalid write on metadata
  // (overlaps with qcow2_header)", EIO, only the corrupt bit changes; qcow2 fails too but first writes a refcount at 1 TiB + 0x20000
  // reftable entry 0 cleared (refblock missing): qemu-io "Marking image as corrupt: Preventing invalid write on metadata
  // (overlaps with refcount table)", EIO, nothing else changed; qcow2 "wrote 4096/4096", exit 0, its new refblock and
  // refcounts land on the reftable (0x10004…) and the old refblock at 0x20000 is overwritten: qemu-img check then finds errors
  { id: "write-where-qemu-marks-corrupt (refblock missing)", make: [create(), write("write -P 1 0 64k")], patch: [[0x10000, "0000000000000000"]], ops: ["write"], fixed: true },
  // nb_snapshots 1 with snapshots_offset 0: qemu-img info 0, check 2 ("snapshot table entry 0 is incomplete" …);
  // qcow2: "Snapshot table offset invalid (0)" (exit 1)
  { id: "snapshot-table-offset-0", make: [create(), write("write -P 1 0 64k")], patch: [[60, "00000001"]], ops: ["info", "check"] },
  // (data only in the first cluster: the write at 64k allocates)
  { id: "write-where-qemu-marks-corrupt (refblock at 1 TiB)", make: [create(), write("write -P 1 0 64k")], patch: [[0x10000, "0000010000020000"]], ops: ["write"], fixed: true },
  // refcount table entry 0 -> 0x20200 (unaligned): QEMU "Marking image as corrupt: Refblock offset 0x20200 unaligned (reftable index: 0)",
  // EIO; qcow2 marks corrupt too but also writes a refcount into the unaligned block (byte 0x20203)
  { id: "write-where-qemu-marks-corrupt (unaligned refblock)", make: [create(), write("write -P 1 0 64k")], patch: [[0x10000, "0000000000020200"]], ops: ["write"], fixed: true },
  // v2, L1 entry 0 -> L2 at 16 TiB + 0x40000: qemu-io "Failed to flush the L2 table cache: File too large" (exit 1);
  // qcow2 prints "wrote 4096/4096 bytes", exit 0, and reading 64k back gives zeros
  { id: "metadata-write-error-swallowed", make: [create("-o", "compat=0.10"), write("write -P 1 0 128k")], patch: [[0x30000, "8000100000040000"]], ops: ["write"], fixed: true },
  // crypt_method 1 (AES) without a key: qemu-img check "Parameter 'encrypt.key-secret' is required for cipher" (exit 1); fixed in image/open.ts
  { id: "encrypted-check-without-key (fixed)", make: [create(), write("write -P 1 0 128k")], patch: [[32, "00000001"]], ops: ["check"], fixed: true },
  // L2 entry 0 = 0x8000000000000000 over a raw backing file of 0x5a: QEMU reads 0x5a (unallocated), qcow2 reads the header cluster
  { id: "copied-only-l2-entry", make: [create("-b", "back.raw", "-F", "raw"), write("write -P 1 0 128k")], patch: [[0x40000, "8000000000000000"]], ops: ["read", "convert"], fixed: true },
  // size = 1: qemu-img convert writes 0 bytes (1 / 512 sectors), qcow2 writes 1 byte (0x01)
  { id: "size-not-sector-multiple", make: [create(), write("write -P 1 0 128k")], patch: [[24, "0000000000000001"]], ops: ["convert"], fixed: true },
  // the end-of-extensions marker with a length past the cluster: QEMU "Header extension too large"; fixed in format/extensions.ts
  { id: "end-marker-length (fixed)", make: [create("-o", "cluster_size=4k"), write("write -P 1 0 8k")], patch: [[116, "00001000"]], ops: ["info", "check"], fixed: true }
]

/** Where the first bitmap directory entry's extra_data_size is (from the bitmaps extension). */
const bitmapDirPatch = (b: Uint8Array): ReadonlyArray<readonly [number, string]> => {
  const layout = parseLayout(b)
  const at = layout.bitmapDirAt[0]!
  return [[at + 20, "00000008"]]
}

describe("known classes, minimal reproductions (flip it.fails to it when fixed)", () => {
  let rdir = ""
  beforeAll(() => {
    rdir = makeTempDir("qcow2-damaged-repro-")
    buildShared(rdir)
  }, 180_000)
  afterAll(() => {
    if (rdir !== "") fs.rmSync(rdir, { recursive: true, force: true })
  })
  const runRepro = async (r: Repro): Promise<string[]> => {
    const sub = fs.mkdtempSync(path.join(rdir, "r-"))
    fs.copyFileSync(path.join(rdir, "back.raw"), path.join(sub, "back.raw"))
    const { spawnSync } = await import("node:child_process")
    for (const [tool, ...args] of r.make) {
      const x = spawnSync(tool, args, { cwd: sub, encoding: "utf8" })
      if (x.status !== 0) throw new Error(`${tool} ${args.join(" ")}: ${x.stderr}`)
    }
    const bytes = new Uint8Array(fs.readFileSync(path.join(sub, "image.qcow2")))
    const patches = r.id.startsWith("bitmaps") ? bitmapDirPatch(bytes) : r.patch
    const image = patched(
      bytes,
      patches.map(([at, hex]) => ({ at, bytes: new Uint8Array(Buffer.from(hex, "hex")) }))
    )
    const result = await runCase(sub, "r", image, r.ops)
    const findings = compare(image, result).map((f) => `${f.op} ${f.kind}: ${f.detail}`)
    if (process.env.DAMAGED_VERBOSE !== undefined) console.log(`${r.id}:\n  ${findings.join("\n  ") || "(no findings)"}`)
    return findings
  }
  for (const r of REPROS) {
    const test = r.fixed === true ? it : it.fails
    test(r.id, async () => {
      expect(await runRepro(r)).toEqual([])
    }, 120_000)
  }
})
