/**
 * Fault-injection harness for faults.test.ts (QEMU iotest 026 style): runs a
 * workload of guest requests through the public Image API over an in-memory
 * store wrapped by the crash recorder and the fault injector of
 * @qcow2/storage/testing, and judges the result with our reader and with
 * qemu-img (check + convert).
 */
import { execFile, execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Cause, Effect, Exit, Option } from "effect"
import { makeMemoryStorage } from "@qcow2/storage"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { makeCrashRecorder, makeFaultInjector } from "@qcow2/storage/testing"
import type { CrashRecorder, FaultOperation, KeepUnflushed } from "@qcow2/storage/testing"
import { fromSystemError } from "@qcow2/storage-node"
import { ImageError, openImage } from "../src/index.js"
import type { Image } from "../src/index.js"
import { memoryFiles } from "./memory.js"

// ---------------------------------------------------------------------------
// Workload steps and the model of what the guest may read afterwards

export type Step =
  | { readonly op: "write"; readonly offset: number; readonly data: Uint8Array }
  | { readonly op: "compressed"; readonly offset: number; readonly data: Uint8Array }
  | { readonly op: "zero"; readonly offset: number; readonly length: number; readonly unmap?: boolean }
  | { readonly op: "discard"; readonly offset: number; readonly length: number }
  | { readonly op: "truncate"; readonly size: number }
  | { readonly op: "read"; readonly offset: number; readonly length: number }
  | { readonly op: "flush" }

export const describeStep = (s: Step): string => {
  switch (s.op) {
    case "write":
    case "compressed":
      return `${s.op} ${s.offset}+${s.data.length}`
    case "zero":
      return `zero ${s.offset}+${s.length}${s.unmap ? " unmap" : ""}`
    case "discard":
    case "read":
      return `${s.op} ${s.offset}+${s.length}`
    case "truncate":
      return `truncate ${s.size}`
    case "flush":
      return "flush"
  }
}

/** What a step does to guest bytes if it takes effect (data undefined = zeros). */
interface Mutation {
  readonly step: number
  readonly offset: number
  readonly length: number
  readonly data: Uint8Array | undefined
  readonly ok: boolean
}

/** The guest range a step changes, as the engine defines it (discard: whole clusters only, or the last partial cluster at the image end). */
const mutationOf = (s: Step, step: number, virtualSize: number, cs: number, ok: boolean): Mutation | undefined => {
  switch (s.op) {
    case "write":
    case "compressed":
      return { step, offset: s.offset, length: s.data.length, data: s.data, ok }
    case "zero":
      return { step, offset: s.offset, length: s.length, data: undefined, ok }
    case "discard": {
      const first = Math.ceil(s.offset / cs) * cs
      const end = s.offset + s.length
      const last = end === virtualSize ? end : Math.floor(end / cs) * cs
      return first < last ? { step, offset: first, length: last - first, data: undefined, ok } : undefined
    }
    default:
      return undefined
  }
}

/**
 * Every request of a run, successful or failed. A byte may read as the value
 * given by the last *successful* request that is durable (or the initial
 * content), or as the value of any request issued after that one (failed
 * requests may or may not have taken effect; requests after the durable
 * point may or may not have reached the disk). Nothing else: in particular
 * never bytes written for another guest offset.
 */
export class History {
  readonly mutations: Mutation[] = []
  constructor(readonly initial: Uint8Array) {}

  add(m: Mutation | undefined): void {
    if (m !== undefined && m.length > 0) this.mutations.push(m)
  }

  /**
   * Problems of `got` (guest bytes from offset 0): requests with step <
   * `durable` that succeeded must be visible; only requests with step <
   * `upto` are candidates.
   */
  check(got: Uint8Array, durable: number, upto = Number.POSITIVE_INFINITY, from = 0): string[] {
    const n = got.length
    const base = new Uint8Array(n)
    base.set(this.initial.subarray(from, Math.min(this.initial.length, from + n)))
    const baseStep = new Int32Array(n).fill(-1)
    const relevant = this.mutations.filter((m) => m.step < upto && m.offset < from + n && m.offset + m.length > from)
    for (const m of relevant) {
      if (!m.ok || m.step >= durable) continue
      const start = Math.max(m.offset, from)
      const end = Math.min(m.offset + m.length, from + n)
      if (m.data === undefined) base.fill(0, start - from, end - from)
      else base.set(m.data.subarray(start - m.offset, end - m.offset), start - from)
      baseStep.fill(m.step, start - from, end - from)
    }
    const problems: string[] = []
    let runStart = -1
    let runDetail = ""
    const close = (end: number) => {
      if (runStart >= 0 && problems.length < 8) problems.push(`guest bytes ${from + runStart}..${from + end - 1} ${runDetail}`)
      runStart = -1
    }
    for (let i = 0; i < n; i++) {
      const g = got[i]
      let fine = g === base[i]
      if (!fine) {
        const b = from + i
        for (const m of relevant) {
          if (m.step <= baseStep[i] || b < m.offset || b >= m.offset + m.length) continue
          const v = m.data === undefined ? 0 : m.data[b - m.offset]
          if (v === g) {
            fine = true
            break
          }
        }
      }
      if (fine) {
        close(i)
      } else if (runStart < 0) {
        runStart = i
        runDetail = `read ${hex(got, i)} where ${hex(base, i)} (or a later request's bytes) was expected`
      }
    }
    close(n)
    return problems
  }
}

const hex = (bytes: Uint8Array, at: number): string =>
  Array.from(bytes.subarray(at, Math.min(bytes.length, at + 8)), (b) => b.toString(16).padStart(2, "0")).join("")

// ---------------------------------------------------------------------------
// Fixtures

export interface Fixture {
  /** The image file (img.qcow2) as it is before the workload. */
  readonly image: Uint8Array
  /** Backing file bytes, stored as base.qcow2 next to the image. */
  readonly backing?: Uint8Array
  readonly clusterSize: number
  readonly virtualSize: number
  /** Guest content before the workload, as qemu-img convert reads it. */
  readonly content: Uint8Array
  /** An internal snapshot whose content must never change. */
  readonly snapshot?: { readonly name: string; readonly content: Uint8Array }
  /** Directory holding base.qcow2 (when there is one), where judged images are written. */
  readonly dir: string
}

export const readStore = (storage: BlockStorageShape): Uint8Array =>
  Effect.runSync(
    Effect.gen(function* () {
      const bytes = new Uint8Array(yield* storage.size())
      yield* storage.read(0, bytes)
      return bytes
    }) as Effect.Effect<Uint8Array>
  )

// ---------------------------------------------------------------------------
// Running a workload

export type FaultKind = "read" | "write" | "flush"
export type FaultErrno = "EIO" | "ENOSPC"

export interface FaultSpec {
  readonly kind: FaultKind
  readonly nth: number
  readonly errno: FaultErrno
}

export const describeFault = (f: FaultSpec): string => `${f.kind} #${f.nth} ${f.errno}`

export interface FlushPoint {
  /** Steps before this index that succeeded are durable. */
  readonly durable: number
  /** Recorded operations this flush made durable (a cut whose durableAt is at least this keeps them). */
  readonly recorded: number
}

export interface RunResult {
  readonly counts: Readonly<Record<FaultKind, number>>
  /** Per step: "ok", "failed: <reason> <message>", "defect: …", "not run". */
  readonly outcomes: ReadonlyArray<string>
  readonly openError?: ImageError
  readonly errors: ReadonlyArray<ImageError>
  /** Defects, hangs, non-ImageError failures, wrong read data during the run. */
  readonly problems: ReadonlyArray<string>
  readonly flushPoints: ReadonlyArray<FlushPoint>
  readonly history: History
  /** Virtual sizes the image may have afterwards. */
  readonly sizes: ReadonlyArray<number>
  readonly final: Uint8Array
  readonly recorder: CrashRecorder
  readonly fired: boolean
  /** Recorded operations when the fault fired. */
  readonly firedAtRecorded: number
  /** Step index the fault hit (-1: open, steps.length: close). */
  readonly firedAtStep: number
}

const STEP_TIMEOUT = "20 seconds"
const RUN_TIMEOUT_MS = 60_000

type Outcome<A> = { readonly _tag: "ok"; readonly value: A } | { readonly _tag: "error"; readonly error: ImageError } | { readonly _tag: "defect"; readonly message: string }

/** Runs a request with a time limit and sorts its end: success, a typed ImageError, or anything else (a defect). */
const attempt = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<Outcome<A>, never, R> =>
  Effect.map(Effect.exit(Effect.timeoutOption(effect, STEP_TIMEOUT)), (exit): Outcome<A> => {
    if (Exit.isSuccess(exit)) {
      return Option.isSome(exit.value) ? { _tag: "ok", value: exit.value.value } : { _tag: "defect", message: `hang: no answer within ${STEP_TIMEOUT}` }
    }
    const cause = exit.cause
    if (Cause.hasDies(cause) || Cause.hasInterrupts(cause)) return { _tag: "defect", message: `defect: ${Cause.pretty(cause).slice(0, 600)}` }
    const error = Cause.findErrorOption(cause)
    if (Option.isSome(error) && error.value instanceof ImageError) return { _tag: "error", error: error.value }
    return { _tag: "defect", message: `failure that is not an ImageError: ${Cause.pretty(cause).slice(0, 600)}` }
  })

/** An ENOSPC as storage-node reports it (reason Io, errno in the cause and the message). */
const enospc = (operation: string, location: string, offset?: number, length?: number): StorageError =>
  fromSystemError(Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }), operation, location, offset, length)

const isInjected = (e: unknown): e is StorageError =>
  typeof e === "object" && e !== null && (e as { _tag?: string })._tag === "StorageError" && String((e as { message?: string }).message).startsWith("injected fault")

/**
 * Runs `steps` on the fixture's image (opened with openImage over memory
 * storage) with an optional fault, then closes it (the scope's close
 * flushes). The store is recorder-wrapped (for crash states) under the
 * fault injector, so a failed operation never reaches it.
 */
export async function runWorkload(fixture: Fixture, steps: ReadonlyArray<Step>, fault?: FaultSpec): Promise<RunResult> {
  let recorder: CrashRecorder | undefined
  let injector: ReturnType<typeof makeFaultInjector> | undefined
  let currentStep = -1
  let fired = false
  let firedAtRecorded = -1
  let firedAtStep = -2
  const wrap = (name: string, storage: BlockStorageShape): BlockStorageShape => {
    if (name !== "img.qcow2" || recorder !== undefined) return storage
    recorder = makeCrashRecorder(storage, { initial: fixture.image })
    const inj = makeFaultInjector(recorder.storage)
    injector = inj
    if (fault !== undefined) inj.failNth(fault.kind as FaultOperation, fault.nth)
    const s = inj.storage
    const guard = <A>(operation: string, offset: number | undefined, length: number | undefined, effect: Effect.Effect<A, StorageError>) =>
      Effect.mapError(effect, (e) => {
        if (!isInjected(e)) return e
        fired = true
        firedAtRecorded = recorder!.operations().length
        firedAtStep = currentStep
        return fault?.errno === "ENOSPC" ? enospc(operation, s.location, offset, length) : e
      })
    return {
      ...s,
      read: (offset, into) => guard("read", offset, into.length, s.read(offset, into)),
      write: (offset, data) => guard("write", offset, data.length, s.write(offset, data)),
      flush: () => guard("flush", undefined, undefined, s.flush())
    }
  }
  const fs = memoryFiles(wrap)
  fs.files.set("img.qcow2", makeMemoryStorage({ initial: fixture.image, name: "img.qcow2" }))
  if (fixture.backing !== undefined) fs.files.set("base.qcow2", makeMemoryStorage({ initial: fixture.backing, name: "base.qcow2" }))

  const cs = fixture.clusterSize
  const history = new History(fixture.content)
  const outcomes: string[] = steps.map(() => "not run")
  const errors: ImageError[] = []
  const problems: string[] = []
  const flushPoints: FlushPoint[] = [{ durable: 0, recorded: 0 }]
  const sizes = new Set<number>([fixture.virtualSize])
  let openError: ImageError | undefined

  const program = Effect.gen(function* () {
    const opened = yield* attempt(openImage("img.qcow2"))
    if (opened._tag === "defect") {
      problems.push(`open: ${opened.message}`)
      return
    }
    if (opened._tag === "error") {
      openError = opened.error
      errors.push(opened.error)
      return
    }
    const image: Image = opened.value
    for (let i = 0; i < steps.length; i++) {
      currentStep = i
      const s = steps[i]
      const sizeBefore = image.virtualSize
      let readBuffer: Uint8Array | undefined
      let effect: Effect.Effect<void, ImageError>
      switch (s.op) {
        case "write":
          effect = image.write(s.offset, s.data)
          break
        case "compressed":
          effect = image.writeCompressed(s.offset, s.data)
          break
        case "zero":
          effect = image.writeZeroes(s.offset, s.length, { unmap: s.unmap ?? false })
          break
        case "discard":
          effect = image.discard(s.offset, s.length)
          break
        case "truncate":
          sizes.add(s.size)
          effect = image.truncate(s.size)
          break
        case "read":
          readBuffer = new Uint8Array(s.length)
          effect = image.read(s.offset, readBuffer)
          break
        case "flush":
          effect = image.flush()
          break
      }
      const result = yield* attempt(effect)
      if (result._tag === "defect") {
        outcomes[i] = result.message
        problems.push(`step ${i} (${describeStep(s)}): ${result.message}`)
        return // a defect may leave locks held: stop here
      }
      const ok = result._tag === "ok"
      if (!ok) errors.push(result.error)
      outcomes[i] = ok ? "ok" : `failed: ${result.error.reason}: ${result.error.message}`
      history.add(mutationOf(s, i, sizeBefore, cs, ok))
      if (ok && readBuffer !== undefined && s.op === "read") {
        const bad = history.check(readBuffer, i, i, s.offset)
        for (const b of bad) problems.push(`step ${i} (${describeStep(s)}) returned wrong data: ${b}`)
      }
      if (ok && s.op === "flush") {
        const ops = recorder!.operations()
        let recorded = ops.length
        for (let k = ops.length - 1; k >= 0; k--) {
          const op = ops[k]
          if (op._tag === "Flush") {
            recorded = op.durable
            break
          }
        }
        flushPoints.push({ durable: i, recorded })
      }
    }
    currentStep = steps.length
  })

  let timer: ReturnType<typeof setTimeout> | undefined
  const hang = new Promise<"hang">((resolve) => {
    timer = setTimeout(() => resolve("hang"), RUN_TIMEOUT_MS)
  })
  try {
    const ended = await Promise.race([fs.run(program).then(() => "done" as const, (e: unknown) => `run failed: ${String(e)}`), hang])
    if (ended === "hang") problems.push(`hang: the run (open, steps, close) did not end within ${RUN_TIMEOUT_MS} ms`)
    else if (ended !== "done") problems.push(ended)
  } finally {
    clearTimeout(timer)
  }
  return {
    counts: { read: injector?.calls("read") ?? 0, write: injector?.calls("write") ?? 0, flush: injector?.calls("flush") ?? 0 },
    outcomes,
    openError,
    errors,
    problems,
    flushPoints,
    history,
    sizes: [...sizes],
    final: readStore(fs.files.get("img.qcow2")!),
    recorder: recorder!,
    fired,
    firedAtRecorded,
    firedAtStep
  }
}

// ---------------------------------------------------------------------------
// Judging an image state

/** Reads the whole guest content of image bytes with our reader (read-only, no repair). */
export async function readWithOurs(fixture: Fixture, bytes: Uint8Array): Promise<{ content: Uint8Array } | { error: string }> {
  const fs = memoryFiles()
  fs.files.set("img.qcow2", makeMemoryStorage({ initial: bytes, name: "img.qcow2" }))
  if (fixture.backing !== undefined) fs.files.set("base.qcow2", makeMemoryStorage({ initial: fixture.backing, name: "base.qcow2" }))
  const out = await fs.run(
    attempt(
      Effect.gen(function* () {
        const image = yield* openImage("img.qcow2", { readOnly: true })
        const content = new Uint8Array(image.virtualSize)
        yield* image.read(0, content)
        return content
      })
    )
  )
  if (out._tag === "ok") return { content: out.value }
  return { error: out._tag === "error" ? `${out.error.reason}: ${out.error.message}` : out.message }
}

const INCOMPAT_DIRTY = 1
const INCOMPAT_CORRUPT = 2

/** Header feature bits of a v3 image. */
export const headerBits = (bytes: Uint8Array): { dirty: boolean; corrupt: boolean } => {
  if (bytes.length < 80) return { dirty: false, corrupt: false }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const version = view.getUint32(4)
  if (version < 3) return { dirty: false, corrupt: false }
  const low = view.getUint32(76)
  return { dirty: (low & INCOMPAT_DIRTY) !== 0, corrupt: (low & INCOMPAT_CORRUPT) !== 0 }
}

/** Errors qemu-img check reports for a dirty lazy-refcounts image whose refcount increases were not written yet (QEMU repairs those on open). */
const STALE_REFCOUNT_LINES = [
  /^ERROR cluster \d+ refcount=0 reference=1$/,
  /^ERROR OFLAG_COPIED (data|L2) cluster: .* refcount=0$/,
  /^Leaked cluster \d+ refcount=\d+ reference=\d+$/
]

export interface QemuVerdict {
  /** Problems with the image structure (empty: consistent, leaks allowed). */
  readonly problems: ReadonlyArray<string>
  readonly rawHash: string
  readonly raw?: Uint8Array
  readonly snapshotRaw?: Uint8Array
  readonly dirty: boolean
  readonly corruptBit: boolean
}

const SCRIPT = `
f="$1"
qemu-img check --output=json "$f" >"$f.json" 2>"$f.err"; echo $? >"$f.rc"
qemu-img convert -O raw "$f" "$f.raw" 2>"$f.cerr"; echo $? >"$f.crc"
if [ "$2" = dirty ]; then
  cp "$f" "$f.rep"
  qemu-img check -r all "$f.rep" >"$f.rout" 2>&1
  qemu-img check "$f.rep" >"$f.rjson" 2>&1; echo $? >"$f.rrc"
fi
if [ -n "$3" ]; then qemu-img convert -l "snapshot.name=$3" -O raw "$f" "$f.snap" 2>>"$f.cerr"; fi
exit 0
`

let running = 0
const queue: Array<() => void> = []
const QEMU_CONCURRENCY = 3
const limited = async <A>(f: () => Promise<A>): Promise<A> => {
  if (running >= QEMU_CONCURRENCY) await new Promise<void>((resolve) => queue.push(resolve))
  running++
  try {
    return await f()
  } finally {
    running--
    queue.shift()?.()
  }
}

let fileCounter = 0

/** qemu-img check (and, for a dirty image, check after `-r all`) and qemu-img convert of image bytes written next to the fixture's backing file. */
export async function judgeWithQemu(fixture: Fixture, bytes: Uint8Array, keepRaw: boolean): Promise<QemuVerdict> {
  const bits = headerBits(bytes)
  const file = join(fixture.dir, `state-${process.pid}-${fileCounter++}.qcow2`)
  writeFileSync(file, bytes)
  try {
    await limited(
      () =>
        new Promise<void>((resolve, reject) => {
          execFile("bash", ["-c", SCRIPT, "judge", file, bits.dirty ? "dirty" : "", fixture.snapshot?.name ?? ""], { timeout: 60_000 }, (err) =>
            err ? reject(err) : resolve()
          )
        })
    )
    const problems: string[] = []
    const rc = Number(readFileSync(`${file}.rc`, "utf8").trim())
    let json: { corruptions?: number; leaks?: number; "check-errors"?: number } = {}
    try {
      json = JSON.parse(readFileSync(`${file}.json`, "utf8") || "{}")
    } catch {
      json = {}
    }
    const stderr = readFileSync(`${file}.err`, "utf8").trim()
    const corruptions = json.corruptions ?? 0
    const checkErrors = json["check-errors"] ?? 0
    if (!bits.dirty) {
      if (rc !== 0 && rc !== 3) problems.push(`qemu-img check exit ${rc}: corruptions=${corruptions} check-errors=${checkErrors}: ${stderr.split("\n").slice(0, 6).join(" | ")}`)
    } else {
      // Lazy refcounts: stale refcount increases are expected and repaired on open; nothing else is.
      const lines = stderr.split("\n").map((l) => l.trim()).filter((l) => l.length > 0)
      const unexpected = [...new Set(lines.filter((l) => !STALE_REFCOUNT_LINES.some((re) => re.test(l))))]
      if (checkErrors !== 0 || rc === 1 || unexpected.length > 0 || (rc !== 0 && rc !== 2 && rc !== 3)) {
        problems.push(`qemu-img check of the dirty image exit ${rc}: corruptions=${corruptions} check-errors=${checkErrors}, not stale refcounts: ${unexpected.slice(0, 6).join(" | ")}`)
      }
      const rrc = Number(readFileSync(`${file}.rrc`, "utf8").trim())
      if (rrc !== 0) problems.push(`qemu-img check after 'check -r all' (QEMU's repair on open) exit ${rrc}: ${readFileSync(`${file}.rjson`, "utf8").trim().split("\n").slice(0, 6).join(" | ")}`)
    }
    const crc = Number(readFileSync(`${file}.crc`, "utf8").trim())
    let raw: Uint8Array | undefined
    let rawHash = ""
    if (crc !== 0) {
      problems.push(`qemu-img convert failed (exit ${crc}): ${readFileSync(`${file}.cerr`, "utf8").trim().slice(0, 400)}`)
    } else {
      const r = new Uint8Array(readFileSync(`${file}.raw`))
      rawHash = sha1(r)
      if (keepRaw) raw = r
    }
    let snapshotRaw: Uint8Array | undefined
    if (fixture.snapshot !== undefined) {
      if (existsSync(`${file}.snap`)) snapshotRaw = new Uint8Array(readFileSync(`${file}.snap`))
      else problems.push(`qemu-img convert -l snapshot.name=${fixture.snapshot.name} failed: ${readFileSync(`${file}.cerr`, "utf8").trim().slice(0, 400)}`)
    }
    return { problems, rawHash, ...(raw ? { raw } : {}), ...(snapshotRaw ? { snapshotRaw } : {}), dirty: bits.dirty, corruptBit: bits.corrupt }
  } finally {
    for (const ext of ["", ".json", ".err", ".rc", ".raw", ".crc", ".cerr", ".rep", ".rout", ".rjson", ".rrc", ".snap"]) rmSync(file + ext, { force: true })
  }
}

export const sha1 = (bytes: Uint8Array): string => createHash("sha1").update(bytes).digest("hex")

export interface StateReport {
  readonly problems: ReadonlyArray<string>
  readonly corruptBit: boolean
}

/** Cache of qemu verdicts by image bytes (crash states repeat a lot). */
const verdicts = new Map<string, Promise<QemuVerdict>>()

/**
 * Judges one state of the image file: qemu-img check passes (leaks
 * allowed; for a dirty lazy-refcounts image only stale refcounts, and a
 * clean check after QEMU's repair), and the guest content read by our
 * reader and by qemu-img convert is what `history` allows with the
 * requests before step `durable` durable; the internal snapshot, if any,
 * is unchanged.
 */
export async function judgeState(fixture: Fixture, run: Pick<RunResult, "history" | "sizes">, bytes: Uint8Array, durable: number): Promise<StateReport> {
  const problems: string[] = []
  const readerProblems: string[] = []
  const ours = await readWithOurs(fixture, bytes)
  let oursHash = ""
  if ("error" in ours) {
    readerProblems.push(`our reader cannot read the image: ${ours.error}`)
  } else {
    oursHash = sha1(ours.content)
    if (!run.sizes.includes(ours.content.length)) readerProblems.push(`our reader: virtual size ${ours.content.length}, expected one of ${run.sizes.join(", ")}`)
    for (const p of run.history.check(ours.content, durable).slice(0, 3)) readerProblems.push(`our reader: ${p}`)
  }
  const key = sha1(bytes)
  let pending = verdicts.get(key)
  if (pending === undefined) {
    pending = judgeWithQemu(fixture, bytes, false)
    verdicts.set(key, pending)
    if (verdicts.size > 5000) verdicts.delete(verdicts.keys().next().value!)
  }
  let verdict = await pending
  problems.push(...verdict.problems)
  if (verdict.rawHash !== "" && verdict.rawHash !== oursHash) {
    // qemu-img reads something else than we do: check what it reads.
    verdict = await judgeWithQemu(fixture, bytes, true)
    const raw = verdict.raw!
    if (!run.sizes.includes(raw.length)) problems.push(`qemu-img convert: virtual size ${raw.length}, expected one of ${run.sizes.join(", ")}`)
    for (const p of run.history.check(raw, durable).slice(0, 3)) problems.push(`qemu-img convert: ${p}`)
    if (!("error" in ours)) problems.push("our reader and qemu-img convert read different guest content")
  }
  if (fixture.snapshot !== undefined && verdict.snapshotRaw !== undefined) {
    const a = verdict.snapshotRaw
    const b = fixture.snapshot.content
    if (a.length !== b.length || sha1(a) !== sha1(b)) {
      let at = 0
      while (at < Math.min(a.length, b.length) && a[at] === b[at]) at++
      problems.push(`internal snapshot '${fixture.snapshot.name}' changed (first difference at guest byte ${at})`)
    }
  }
  return { problems: [...problems, ...readerProblems], corruptBit: verdict.corruptBit }
}

/** The durable step index for a crash at `cut`: the newest image-level flush made durable by a storage flush before the cut. */
export const durableStepAt = (run: RunResult, cut: number): number => {
  const durableOps = run.recorder.durableAt(cut)
  let best = 0
  for (const f of run.flushPoints) if (f.recorded <= durableOps && f.durable > best) best = f.durable
  return best
}

/** Crash states after the fault: cuts from the fault to the end (sampled), each with unflushed writes dropped, kept, and kept at random (torn at 512 bytes). */
export const crashStates = (run: RunResult, maxCuts: number): Array<{ cut: number; keep: KeepUnflushed }> => {
  const total = run.recorder.operations().length
  const start = Math.max(0, Math.min(run.firedAtRecorded, total))
  const cuts = sample(start, total, maxCuts)
  const out: Array<{ cut: number; keep: KeepUnflushed }> = []
  for (const cut of cuts) {
    out.push({ cut, keep: "none" })
    out.push({ cut, keep: "all" })
    out.push({ cut, keep: { seed: cut * 7 + 1, sector: 512 } })
  }
  return out
}

/** Up to `max` integers spread evenly over [from, to], both ends included. */
export const sample = (from: number, to: number, max: number, phase = 0): number[] => {
  if (to < from) return []
  const count = to - from + 1
  if (count <= max) return Array.from({ length: count }, (_, i) => from + i)
  const out = new Set<number>([from, to])
  const stride = (count - 1) / (max - 1)
  for (let i = 0; out.size < max && i < max * 2; i++) out.add(from + Math.min(count - 1, Math.round(i * stride + phase * stride) % count))
  return [...out].sort((a, b) => a - b)
}

// ---------------------------------------------------------------------------
// qemu-made fixtures

export const sh = (cmd: string, args: string[], cwd?: string): string => execFileSync(cmd, args, { encoding: "utf8", ...(cwd ? { cwd } : {}) })

/** A fresh directory for one workload's files. */
export const workloadDir = (root: string, name: string): string => {
  const dir = join(root, name.replace(/[^a-z0-9]+/gi, "-"))
  mkdirSync(dir, { recursive: true })
  return dir
}

/** Guest content of an image file as qemu-img convert reads it. */
export const qemuContent = (file: string, snapshot?: string): Uint8Array => {
  const raw = `${file}.content.raw`
  sh("qemu-img", ["convert", ...(snapshot ? ["-l", `snapshot.name=${snapshot}`] : []), "-O", "raw", file, raw])
  const bytes = new Uint8Array(readFileSync(raw))
  rmSync(raw)
  return bytes
}
