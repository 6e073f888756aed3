/**
 * Fault injection through the public Image API, like QEMU's iotest 026:
 * every workload is first run without a fault to count the storage reads,
 * writes and flushes it makes (open and close included); then, for every N
 * up to that count (sampled when there are many) and each kind of
 * operation, it is run again with the N-th operation failing with EIO or
 * ENOSPC. Each run must end cleanly (every failing request a typed
 * ImageError, no defect, no hang), and the image file afterwards must pass
 * `qemu-img check` (leaks allowed) and read back, through our reader and
 * `qemu-img convert`, every byte acknowledged by an earlier successful
 * flush. The crash variant cuts the recorded write stream at the points
 * after a fault and checks the same of each state a crash could leave.
 *
 * The injector of @qcow2/storage/testing only fails with reason Io; ENOSPC
 * is made here as storage-node reports it (reason Io, "(ENOSPC)" in the
 * message, the errno in the cause). Dirty lazy-refcounts images may show
 * stale refcount increases (refcount=0 reference=1), which QEMU repairs on
 * open; anything else is corruption, and `qemu-img check -r all` must
 * leave them clean.
 *
 * Environment: FAULTS_FULL=1 runs every N of every kind with both errors and
 * more crash points (slow, exploratory: cases past the sampled ones may
 * fail); FAULTS_CAP sets how many N per kind run with EIO (default 16,
 * ENOSPC a third of that); FAULTS_CRASH_CUTS the cuts per crash case
 * (default 5); FAULTS_ONLY=sweep|crash; FAULTS_VERBOSE=1..4 prints counts,
 * every case, crash operation logs, error statistics.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import type { CreateOptions, Image } from "../src/index.js"
import { createImage, openImage } from "../src/index.js"
import { makeCrashRecorder } from "@qcow2/storage/testing"
import type { CrashRecorder } from "@qcow2/storage/testing"
import type { Fixture, FaultErrno, FaultKind, FaultSpec, RunResult, Step } from "./faults-helpers.js"
import {
  crashStates,
  describeFault,
  describeStep,
  durableStepAt,
  judgeState,
  judgeWithQemu,
  qemuContent,
  readStore,
  readWithOurs,
  runWorkload,
  sample,
  sh,
  workloadDir
} from "./faults-helpers.js"
import { pattern, qemuCheck } from "./helpers.js"
import { memoryFiles } from "./memory.js"

// Hundreds of image states go through qemu-img: keep them in memory where there is a tmpfs.
const tmp = { dir: mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "qcow2-faults-")) }
afterAll(() => rmSync(tmp.dir, { recursive: true, force: true }))

const FULL = process.env.FAULTS_FULL === "1"
const CAP_EIO = FULL ? Number.POSITIVE_INFINITY : Number(process.env.FAULTS_CAP ?? 16)
const CAP_ENOSPC = FULL ? Number.POSITIVE_INFINITY : Math.max(2, Math.round(CAP_EIO / 3))
const CRASH_CUTS = FULL ? 64 : Number(process.env.FAULTS_CRASH_CUTS ?? 5)
const ONLY = process.env.FAULTS_ONLY // "sweep" | "crash"
const KINDS: ReadonlyArray<FaultKind> = ["read", "write", "flush"]
const ERRNOS: ReadonlyArray<FaultErrno> = ["EIO", "ENOSPC"]

const KiB = 1024
const MiB = 1024 * 1024

// ---------------------------------------------------------------------------
// Steps

const w = (offset: number, length: number, seed: number): Step => ({ op: "write", offset, data: pattern(length, seed) })
/** Compressible cluster content (text-like runs). */
const textish = (length: number, seed: number): Uint8Array => {
  const out = new Uint8Array(length)
  const word = new TextEncoder().encode(`qcow2 cluster ${seed} refcount backing `)
  for (let i = 0; i < length; i++) out[i] = word[(i + seed) % word.length]
  return out
}
const c = (offset: number, length: number, seed: number): Step => ({ op: "compressed", offset, data: textish(length, seed) })
const z = (offset: number, length: number, unmap = false): Step => ({ op: "zero", offset, length, unmap })
const d = (offset: number, length: number): Step => ({ op: "discard", offset, length })
const r = (offset: number, length: number): Step => ({ op: "read", offset, length })
const flush: Step = { op: "flush" }

/** Applies a step without faults (fixtures). */
const apply = (image: Image, s: Step) => {
  switch (s.op) {
    case "write":
      return image.write(s.offset, s.data)
    case "compressed":
      return image.writeCompressed(s.offset, s.data)
    case "zero":
      return image.writeZeroes(s.offset, s.length, { unmap: s.unmap ?? false })
    case "discard":
      return image.discard(s.offset, s.length)
    case "truncate":
      return image.truncate(s.size)
    case "read":
      return image.read(s.offset, new Uint8Array(s.length))
    case "flush":
      return image.flush()
  }
}

// ---------------------------------------------------------------------------
// Fixtures

const finishFixture = (dir: string, bytes: Uint8Array, fields: Omit<Fixture, "image" | "content" | "dir" | "virtualSize">, snapshot?: string): Fixture => {
  const file = join(dir, "fixture.qcow2")
  writeFileSync(file, bytes)
  const check = qemuCheck(file)
  if (check.exitCode !== 0) throw new Error(`fixture of ${dir} does not check clean: ${JSON.stringify(check)}`)
  const content = qemuContent(file)
  return {
    ...fields,
    image: bytes,
    content,
    dir,
    virtualSize: content.length,
    ...(snapshot ? { snapshot: { name: snapshot, content: qemuContent(file, snapshot) } } : {})
  }
}

/** An image made by createImage in memory, with `pre` applied (no faults). */
const created = (options: CreateOptions, pre: ReadonlyArray<Step> = []) => async (dir: string): Promise<Fixture> => {
  const fs = memoryFiles()
  await fs.run(
    Effect.gen(function* () {
      yield* createImage("img.qcow2", options)
      if (pre.length === 0) return
      const image = yield* openImage("img.qcow2")
      for (const s of pre) yield* apply(image, s)
    })
  )
  return finishFixture(dir, readStore(fs.files.get("img.qcow2")!), { clusterSize: options.clusterSize ?? 65536 })
}

/** An image made by qemu-img/qemu-io in `dir` (optionally over base.qcow2, optionally with an internal snapshot). */
const byQemu = (spec: {
  readonly options: string
  readonly size: number
  readonly clusterSize: number
  readonly backing?: ReadonlyArray<string>
  readonly io?: ReadonlyArray<string>
  readonly snapshot?: string
  readonly after?: ReadonlyArray<string>
}) => async (dir: string): Promise<Fixture> => {
  const img = join(dir, "img.qcow2")
  let backing: Uint8Array | undefined
  if (spec.backing !== undefined) {
    sh("qemu-img", ["create", "-f", "qcow2", "base.qcow2", String(spec.size)], dir)
    if (spec.backing.length > 0) sh("qemu-io", [...spec.backing.flatMap((cmd) => ["-c", cmd]), "base.qcow2"], dir)
    backing = new Uint8Array(readFileSync(join(dir, "base.qcow2")))
    sh("qemu-img", ["create", "-f", "qcow2", "-o", spec.options, "-b", "base.qcow2", "-F", "qcow2", "img.qcow2", String(spec.size)], dir)
  } else {
    sh("qemu-img", ["create", "-f", "qcow2", "-o", spec.options, "img.qcow2", String(spec.size)], dir)
  }
  if (spec.io && spec.io.length > 0) sh("qemu-io", [...spec.io.flatMap((cmd) => ["-c", cmd]), "img.qcow2"], dir)
  if (spec.snapshot) sh("qemu-img", ["snapshot", "-c", spec.snapshot, "img.qcow2"], dir)
  if (spec.after && spec.after.length > 0) sh("qemu-io", [...spec.after.flatMap((cmd) => ["-c", cmd]), "img.qcow2"], dir)
  const bytes = new Uint8Array(readFileSync(img))
  return finishFixture(dir, bytes, { clusterSize: spec.clusterSize, ...(backing ? { backing } : {}) }, spec.snapshot)
}

// ---------------------------------------------------------------------------
// Workloads

interface Workload {
  readonly name: string
  readonly fixture: (dir: string) => Promise<Fixture>
  readonly steps: ReadonlyArray<Step>
  /** A table the workload must move (checked on the run without faults). */
  readonly grows?: "L1 table" | "refcount table"
}

/** L1 and refcount table placement from a v3 header. */
const tables = (bytes: Uint8Array) => {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return {
    "L1 table": `${v.getUint32(36)} entries at ${Number(v.getBigUint64(40))}`,
    "refcount table": `${v.getUint32(56)} clusters at ${Number(v.getBigUint64(48))}`
  }
}

const allocating: ReadonlyArray<Step> = [
  w(0, 6000, 1),
  w(64 * KiB + 100, 9000, 2),
  flush,
  w(200_000, 4096, 3),
  w(300_000, 20_000, 4),
  r(0, 16 * KiB),
  flush,
  w(2048, 3000, 5), // in place
  w(500_000, 70_000, 6),
  flush
]

const discards: ReadonlyArray<Step> = [
  d(8 * KiB, 16 * KiB),
  z(40_000, 10_000, true),
  z(64 * KiB, 8 * KiB),
  d(100_000, 5000),
  w(300_000, 16 * KiB, 11), // may reuse freed clusters
  flush,
  z(0, 4096, true),
  w(8 * KiB, 4096, 12), // into a discarded cluster
  d(128 * KiB, 64 * KiB),
  w(600 * KiB, 64 * KiB, 13), // reuses what was just freed
  r(120 * KiB, 16 * KiB),
  flush
]
const discardPre: ReadonlyArray<Step> = [w(0, 256 * KiB, 10), flush]

// One 4 KiB-cluster L2 table covers 2 MiB: the first stays shared with the
// snapshot, the second is unshared by a write after the snapshot.
const snapshotSteps: ReadonlyArray<Step> = [
  w(1000, 100, 21), // copy of the shared L2 table, COW of a shared cluster
  w(8 * KiB, 8 * KiB, 22), // whole shared clusters
  w(2 * MiB + 70_000, 5000, 23), // clusters owned by the active layer (in place)
  flush,
  d(16 * KiB, 8 * KiB), // drops a reference of shared clusters
  z(32 * KiB, 4 * KiB, true),
  z(36 * KiB, 4 * KiB), // zero over a shared cluster
  w(2 * MiB + 100, 300, 24), // shared data cluster under an owned L2 table
  r(0, 48 * KiB),
  flush
]
const snapshotIo = ["write -P 0x21 0 256k", "write -P 0x22 2M 256k"]
const snapshotAfter = ["write -P 0x23 2112k 32k"]

const workloads: ReadonlyArray<Workload> = [
  {
    name: "allocating writes (4 KiB clusters)",
    fixture: created({ size: 1 * MiB, clusterSize: 4096 }),
    steps: allocating
  },
  {
    name: "allocating writes, lazy_refcounts=on, refcount_bits=1",
    fixture: created({ size: 1 * MiB, clusterSize: 4096, lazyRefcounts: true, refcountBits: 1 }),
    steps: allocating
  },
  {
    name: "L1 growth (512 B clusters, truncate 256 KiB -> 4 MiB, write far)",
    fixture: created({ size: 256 * KiB, clusterSize: 512 }),
    steps: [w(0, 4096, 31), flush, { op: "truncate", size: 4 * MiB }, w(3.5 * MiB + 10, 2000, 32), w(2 * MiB + 100, 1000, 33), flush, r(3.5 * MiB, 4096), w(100, 300, 34), flush],
    grows: "L1 table"
  },
  {
    name: "refcount table growth (512 B clusters, refcount_bits=64)", // REFTABLE
    // One 512 B refcount table cluster covers 64 blocks of 64 clusters (2 MiB
    // of file); the fixture fills it nearly, the workload crosses it.
    fixture: created({ size: 4 * MiB, clusterSize: 512, refcountBits: 64 }, [w(0, 1900 * KiB, 40), flush]),
    steps: [w(1900 * KiB, 60 * KiB, 41), w(100 * KiB + 3, 1000, 42), flush, w(1960 * KiB + 7, 60 * KiB, 43), w(2100 * KiB, 40 * KiB, 44), r(1950 * KiB, 64 * KiB), flush],
    grows: "refcount table"
  },
  {
    name: "copy-on-write over a backing file (4 KiB clusters)",
    fixture: byQemu({ options: "cluster_size=4096", size: 1 * MiB, clusterSize: 4096, backing: ["write -P 0x11 0 1M"] }),
    steps: [w(5000, 100, 51), w(10_000, 3000, 52), w(20 * KiB, 8 * KiB, 53), flush, w(40_000, 10_000, 54), d(60 * KiB, 8 * KiB), z(70_000, 1000), r(0, 80_000), w(5100, 50, 55), flush]
  },
  {
    name: "compressed writes, COW over compressed clusters (4 KiB clusters)",
    fixture: created({ size: 1 * MiB, clusterSize: 4096 }, [w(0, 64 * KiB, 61), c(64 * KiB, 32 * KiB, 62), flush]),
    steps: [
      c(128 * KiB, 12 * KiB, 63),
      c(160 * KiB, 4 * KiB, 64),
      flush,
      w(64 * KiB + 100, 200, 65), // partial write into a compressed cluster
      w(68 * KiB, 4 * KiB, 66), // whole compressed cluster overwritten
      z(72 * KiB, 4 * KiB), // zero over a compressed cluster
      d(76 * KiB, 4 * KiB), // discard of a compressed cluster
      c(192 * KiB, 4 * KiB, 67),
      w(1000, 500, 68), // in place
      r(60 * KiB, 40 * KiB),
      flush
    ]
  },
  {
    name: "discard and write-zeroes with reuse (4 KiB clusters)",
    fixture: created({ size: 1 * MiB, clusterSize: 4096 }, discardPre),
    steps: discards
  },
  {
    name: "discard and write-zeroes with reuse, lazy_refcounts=on",
    fixture: created({ size: 1 * MiB, clusterSize: 4096, lazyRefcounts: true }, discardPre),
    steps: discards
  },
  {
    name: "writes into an image with an internal snapshot (shared L2 and data)",
    fixture: byQemu({ options: "cluster_size=4096", size: 4 * MiB, clusterSize: 4096, io: snapshotIo, snapshot: "s1", after: snapshotAfter }),
    steps: snapshotSteps
  },
  {
    name: "writes into an image with an internal snapshot, lazy_refcounts=on",
    fixture: byQemu({ options: "cluster_size=4096,lazy_refcounts=on", size: 4 * MiB, clusterSize: 4096, io: snapshotIo, snapshot: "s1", after: snapshotAfter }),
    steps: snapshotSteps
  }
]

// ---------------------------------------------------------------------------
// Engine bugs these sweeps found (all fixed): each case is also pinned below
// as a test of its own, so that it runs whatever the sampling picks.

const REFTABLE = "refcount table growth (512 B clusters, refcount_bits=64)"

const BUGS = {
  l1Entry:
    "a failed write of a new L1 entry leaves the in-memory L1 naming the new L2 table: later writes under it succeed and flush, but the L1 on disk never names the table, so their data is lost",
  dirtyBit:
    "lazy_refcounts: when the header write or flush that sets the dirty bit fails, the image is still taken as dirty in memory; later requests defer refcount updates on an image not marked dirty on disk, so a crash leaves refcount=0 reference=1 errors that QEMU does not repair",
  reuse:
    "a cluster freed by discard / write-zeroes unmap is handed to another guest offset, and that data written, before the L2 change that freed it is durable: after a crash the freed guest offset reads the other offset's data",
  barrier:
    "flush writes an L2 table and then the refcount block dropping the reference the L2 change removed with no flush between them: a crash keeping the refcount block but not the L2 table leaves refcount=1 reference=2 (rule 3)",
  reftableEntry:
    "a failed write of a refcount table entry (for a new refcount block) during an allocating write: later successful, flushed writes read back as zeros",
  reftableDouble:
    "a fault while the refcount table grows (new block or table write, or the flush after them) counts the clusters being allocated twice: qemu-img check reports refcount=2 reference=1 and OFLAG_COPIED errors (COPIED set on a refcount-2 L2 table and data clusters)",
  reftableSwitch:
    "a fault while switching to the grown refcount table (header write, the flush before it, or a new table entry) leaves the engine using the new table while the disk does not: qemu-img check reports refcount=0 reference=1 for clusters past the old table's reach"
} as const
type Bug = keyof typeof BUGS

/** Sweep cases (exact operation number) that once failed. */
const REGRESSIONS: ReadonlyArray<{ readonly workload: string; readonly fault: FaultSpec; readonly bug: Bug }> = [
  ...[
    "allocating writes (4 KiB clusters)",
    "allocating writes, lazy_refcounts=on, refcount_bits=1",
    "copy-on-write over a backing file (4 KiB clusters)",
    "writes into an image with an internal snapshot (shared L2 and data)",
    "writes into an image with an internal snapshot, lazy_refcounts=on"
  ].map((workload) => ({ workload, kind: "write" as const, nth: 3, bug: "l1Entry" as const })),
  ...([
    ["write", 16, "reftableEntry"],
    ["write", 22, "reftableDouble"],
    ["write", 23, "reftableDouble"],
    ["flush", 15, "reftableDouble"],
    ["write", 24, "reftableSwitch"],
    ["write", 34, "reftableSwitch"],
    ["flush", 16, "reftableSwitch"]
  ] as const).map(([kind, nth, bug]) => ({ workload: REFTABLE, kind, nth, bug }))
].flatMap(({ workload, kind, nth, bug }) => ERRNOS.map((errno) => ({ workload, fault: { kind, nth, errno }, bug })))


// ---------------------------------------------------------------------------
// Running and judging one case

interface Baseline {
  readonly fixture: Fixture
  readonly run: RunResult
}

const baselines = new Map<string, Promise<Baseline>>()
const baselineOf = (wl: Workload): Promise<Baseline> => {
  let b = baselines.get(wl.name)
  if (b === undefined) {
    b = (async () => {
      const fixture = await wl.fixture(workloadDir(tmp.dir, wl.name))
      const run = await runWorkload(fixture, wl.steps)
      return { fixture, run }
    })()
    baselines.set(wl.name, b)
  }
  return b
}

const lastDurable = (run: RunResult): number => Math.max(...run.flushPoints.map((f) => f.durable))

/** Where the fault hit and what each step did, for failure messages. */
const story = (wl: Workload, run: RunResult): string => {
  const where = !run.fired ? "nothing (no fault)" : run.firedAtStep === -1 ? "open" : run.firedAtStep >= wl.steps.length ? "close" : `step ${run.firedAtStep} (${describeStep(wl.steps[run.firedAtStep])})`
  const failed = run.outcomes.map((o, i) => (o === "ok" || o === "not run" ? undefined : `#${i} ${o.slice(0, 160)}`)).filter((x) => x !== undefined)
  return `fault hit ${where}${run.openError ? `; open failed: ${run.openError.message.slice(0, 160)}` : ""}${failed.length ? `; ${failed.join("; ")}` : ""}`
}

const format = (wl: Workload, fault: FaultSpec | undefined, run: RunResult, problems: ReadonlyArray<string>) =>
  `${wl.name} / ${fault ? describeFault(fault) : "no fault"}: ${story(wl, run)}\n    ${problems.slice(0, 6).join("\n    ")}`

/** Problems of one fault case: the run itself, then the image left behind. */
const runCase = async (wl: Workload, fixture: Fixture, fault: FaultSpec): Promise<{ run: RunResult; problems: string[] }> => {
  const run = await runWorkload(fixture, wl.steps, fault)
  const problems = [...run.problems]
  if (!run.fired) problems.push("the fault never fired (the operation count changed?)")
  const state = await judgeState(fixture, run, run.final, lastDurable(run))
  problems.push(...state.problems.map((p) => `final image: ${p}`))
  // An I/O error is not damage: QEMU never sets the corrupt bit or reports corruption for one.
  if (state.corruptBit) problems.push("final image: the corrupt bit is set after an I/O error")
  for (const e of run.errors) if (e.reason === "Corrupt") problems.push(`a request failed with reason Corrupt after an I/O error: ${e.message.slice(0, 200)}`)
  if (process.env.FAULTS_VERBOSE === "4") {
    console.log(`STATS ${JSON.stringify({ w: wl.name, f: describeFault(fault), reasons: run.errors.map((e) => `${e.reason}/${e.errno ?? "-"}/${e.message.slice(0, 60)}`), corruptBit: state.corruptBit })}`)
  }
  if (process.env.FAULTS_VERBOSE === "2") console.log(`${wl.name} / ${describeFault(fault)}: ${story(wl, run)} => ${problems.length} problems${problems.length ? `: ${problems[0].slice(0, 300)}` : ""}`)
  return { run, problems }
}

type CrashPosition = "first" | "middle" | "last" | "any"
/** Where crash runs put the fault, per kind of operation. */
const CRASH_POSITIONS: ReadonlyArray<readonly [FaultKind, CrashPosition]> = FULL
  ? KINDS.flatMap((k) => (["first", "middle", "last"] as const).map((p) => [k, p] as const))
  : [["write", "first"], ["write", "middle"], ["write", "last"], ["flush", "first"], ["flush", "middle"], ["read", "last"]]
const crashN = (count: number, position: CrashPosition): number =>
  position === "first" ? 1 : position === "last" ? count : Math.max(1, Math.ceil(count / 2))

/** Runs the workload with `fault` (or none), then judges the crash states from the fault (or the start) on. */
const crashCase = async (wl: Workload, fixture: Fixture, fault: FaultSpec | undefined, cuts: number): Promise<string[]> => {
  const run = await runWorkload(fixture, wl.steps, fault)
  const failures: string[] = []
  if (run.problems.length > 0) failures.push(format(wl, fault, run, run.problems))
  for (const { cut, keep } of crashStates(run, cuts)) {
    const bytes = run.recorder.stateAt(cut, { keepUnflushed: keep })
    const state = await judgeState(fixture, run, bytes, durableStepAt(run, cut))
    if (state.problems.length > 0) {
      if (process.env.FAULTS_VERBOSE === "3") {
        console.log(`${wl.name} / ${fault ? describeFault(fault) : "no fault"} cut ${cut} keep ${JSON.stringify(keep)} durable step ${durableStepAt(run, cut)}; flush points ${JSON.stringify(run.flushPoints)}; outcomes ${JSON.stringify(run.outcomes)}`)
        run.recorder.operations().forEach((o, i) =>
          console.log(i, o._tag, o._tag === "Write" ? `${o.offset} +${o.data.length} ${Buffer.from(o.data.subarray(0, 16)).toString("hex")}` : o._tag === "Flush" ? `durable ${o.durable}` : JSON.stringify(o))
        )
      }
      failures.push(format(wl, fault, run, [`crash at cut ${cut}/${run.recorder.operations().length} keep=${JSON.stringify(keep)}:`, ...state.problems]))
    }
  }
  return failures
}

// ---------------------------------------------------------------------------

describe.concurrent("fault injection through the Image API (iotest 026 style)", () => {
  for (const wl of workloads) {
    describe(wl.name, () => {
      it("runs cleanly without faults (and counts its operations)", async () => {
        const { fixture, run } = await baselineOf(wl)
        expect(run.problems).toEqual([])
        expect(run.outcomes.filter((o) => o !== "ok")).toEqual([])
        expect(run.counts.write).toBeGreaterThan(0)
        if (wl.grows !== undefined) expect(tables(run.final)[wl.grows]).not.toBe(tables(fixture.image)[wl.grows])
        if (process.env.FAULTS_VERBOSE) console.log(`${wl.name}: ${JSON.stringify(run.counts)}, ${run.recorder.operations().length} recorded operations`, tables(fixture.image), tables(run.final))
        // Every request succeeded and was flushed: the image must read exactly as the model.
        const state = await judgeState(fixture, run, run.final, wl.steps.length)
        expect(state.problems).toEqual([])
        expect(state.corruptBit).toBe(false)
      }, 120_000)

      for (const kind of KINDS) {
        for (const errno of ERRNOS) {
          it.skipIf(ONLY === "crash")(`the N-th ${kind} fails with ${errno}: typed errors, consistent image, flushed data intact`, async () => {
            const { fixture, run: base } = await baselineOf(wl)
            const count = base.counts[kind]
            expect(count).toBeGreaterThan(0)
            const ns = errno === "EIO" ? sample(1, count, CAP_EIO) : sample(1, count, CAP_ENOSPC, 0.5)
            const failures: string[] = []
            for (const nth of ns) {
              const fault: FaultSpec = { kind, nth, errno }
              const { run, problems } = await runCase(wl, fixture, fault)
              if (problems.length > 0) failures.push(format(wl, fault, run, problems))
            }
            expect(failures, `${failures.length} of ${ns.length} cases failed`).toEqual([])
          }, 240_000)
        }
      }

      {
        const test = ONLY === "sweep" ? it.skip : it
        test(`crash at any point of the run without faults: consistent, flushed data intact`, async () => {
          const { fixture } = await baselineOf(wl)
          expect(await crashCase(wl, fixture, undefined, CRASH_CUTS + 2)).toEqual([])
        }, 240_000)
      }

      for (const [kind, position] of CRASH_POSITIONS) {
        const test = ONLY === "sweep" ? it.skip : it
        test(`crash at any point after the ${position} ${kind} fails: consistent, flushed data intact`, async () => {
          const { fixture, run: base } = await baselineOf(wl)
          const fault: FaultSpec = { kind, nth: crashN(base.counts[kind], position), errno: "EIO" }
          expect(await crashCase(wl, fixture, fault, CRASH_CUTS)).toEqual([])
        }, 240_000)
      }
    })
  }
})

describe.concurrent("fault cases that once lost or corrupted data, one each", () => {
  for (const k of REGRESSIONS) {
    const wl = workloads.find((x) => x.name === k.workload)!
    it(`${k.workload} / ${describeFault(k.fault)}: ${k.bug}: ${BUGS[k.bug]}`, async () => {
      const { fixture } = await baselineOf(wl)
      const { problems } = await runCase(wl, fixture, k.fault)
      expect(problems).toEqual([])
    }, 120_000)
  }
})

// ---------------------------------------------------------------------------
// A freed cluster must not be reused before the L2 change that freed it is
// durable: otherwise a crash leaves the old L2 entry pointing at another
// guest offset's data.

describe("discarded cluster reused by another guest offset, then a crash", () => {
  for (const lazy of [false, true]) {
    const body = async () => {
      const cs = 4096
      const A = pattern(cs, 0xa)
      const B = pattern(cs, 0xb)
      let recorder: CrashRecorder | undefined
      let initial: Uint8Array | undefined
      const fs = memoryFiles((name, storage) => {
        if (name !== "img.qcow2" || initial === undefined || recorder !== undefined) return storage
        recorder = makeCrashRecorder(storage, { initial })
        return recorder.storage
      })
      const hosts: { a?: number; b?: number } = {}
      await fs.run(
        Effect.gen(function* () {
          yield* createImage("img.qcow2", { size: 2 * MiB, clusterSize: cs, lazyRefcounts: lazy })
          initial = readStore(fs.files.get("img.qcow2")!)
          const image = yield* openImage("img.qcow2")
          yield* image.write(0, A)
          yield* image.flush()
          hosts.a = (yield* image.blockStatus(0, cs)).hostOffset
          yield* image.discard(0, cs)
          yield* image.write(1 * MiB, B)
          hosts.b = (yield* image.blockStatus(1 * MiB, cs)).hostOffset
          // no flush: the scope's close writes the rest
        })
      )
      const rec = recorder!
      const total = rec.operations().length
      const dir = workloadDir(tmp.dir, `reuse-${lazy ? "lazy" : "strict"}`)
      const fixture: Fixture = { image: initial!, clusterSize: cs, virtualSize: 2 * MiB, content: new Uint8Array(2 * MiB), dir }
      const failures: string[] = []
      const states: Array<Promise<void>> = []
      for (let cut = 0; cut <= total; cut++) {
        for (const keep of ["none", "all", { seed: cut + 101, sector: 512 }] as const) {
          const bytes = rec.stateAt(cut, { keepUnflushed: keep })
          const where = `cut ${cut}/${total} keep=${JSON.stringify(keep)}`
          const judge = async (who: string, got: Uint8Array | string) => {
            if (typeof got === "string") return failures.push(`${where}: ${who} failed: ${got.slice(0, 200)}`)
            const same = (x: Uint8Array) => got.every((v, i) => v === x[i])
            if (same(B)) failures.push(`${where}: ${who} reads guest offset 0 as the data written at 1 MiB (B)`)
            else if (!same(A) && !got.every((v) => v === 0)) failures.push(`${where}: ${who} reads guest offset 0 as neither A nor zeros`)
          }
          states.push(
            (async () => {
              const ours = await readWithOurs(fixture, bytes)
              await judge("our reader", "error" in ours ? ours.error : ours.content.subarray(0, cs))
              const verdict = await judgeWithQemu(fixture, bytes, true)
              await judge("qemu-img convert", verdict.raw ? verdict.raw.subarray(0, cs) : verdict.problems.join("; "))
              // Stale refcounts of a dirty image are allowed (and checked by judgeWithQemu); anything else is not.
              for (const p of verdict.problems) failures.push(`${where}: ${p}`)
            })()
          )
        }
      }
      await Promise.all(states)
      // Whether the freed cluster was reused at all (the interesting case).
      const note = `cluster of offset 0 was at host ${hosts.a}, the write at 1 MiB went to host ${hosts.b}`
      expect(failures, note).toEqual([])
    }
    const title = `${lazy ? "lazy_refcounts=on" : "lazy_refcounts=off"}: write A at 0, flush, discard 0, write B at 1 MiB, crash: offset 0 reads zeros or A, never B`
    // Once failed in both modes: see BUGS.reuse.
    it(title, body, 120_000)
  }
})
