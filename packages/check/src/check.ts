/**
 * `qemu-img check` for qcow2 images, working on the raw file alone
 * (qcow2.txt "Host cluster management"; behaviour of QEMU 7.2's
 * block/qcow2-refcount.c qcow2_check_refcounts and qemu-img's img_check).
 *
 * The caller flushes its caches before and reloads its state after a check
 * that repaired something. A repair that leaves no corruption behind clears
 * the dirty and corrupt header bits, as QEMU's check does.
 */
import { Effect } from "effect"
import { KNOWN_AUTOCLEAR_FEATURES, QCOW2_MAGIC } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { CheckError } from "./errors.js"
import { markConsistent } from "./internal/header.js"
import { Imrt, MAX_IMRT_CLUSTERS } from "./internal/imrt.js"
import { EFBIG, EINVAL, EIO, ENOMEM, ENOTSUP, type Failure, Io, abort } from "./internal/io.js"
import { MetadataGuard } from "./internal/metadata.js"
import { type Fix, NO_FIX, type Pass } from "./internal/pass.js"
import { calculateRefcounts } from "./internal/references.js"
import { checkOflagCopied, compareRefcounts, rebuildRefcountStructure } from "./internal/repair.js"
import { rewriteSnapshotTable } from "./internal/snapshot-table.js"
import { readSnapshotTable } from "./internal/snapshots.js"
import { emptyTally, loadImage, type ImageInfo, type Tally } from "./internal/state.js"
import { StoredRefcounts } from "./internal/stored.js"
import type { CheckResult } from "./result.js"

/** Options of `checkQcow2` (qemu-img check's `-r`). */
export interface CheckOptions {
  /** "leaks": fix leaked clusters; "all": also fix corruptions (qemu-img check -r). */
  readonly repair?: "leaks" | "all"
}

const INT_MAX = 2 ** 31 - 1

/** Rebuilds of the refcount structure in one repair, where QEMU does one. */
const MAX_REBUILDS = 3

/**
 * Findings kept in CheckResult.messages. A badly damaged large image can
 * produce one per cluster (qemu-img streams them to stderr); past this many
 * the rest are counted but not kept, and one last line says so.
 */
export const MAX_MESSAGES = 100_000
const OMITTED = "(further messages omitted)"

const fixFor = (repair: CheckOptions["repair"]): Fix =>
  repair === "all" ? { leaks: true, errors: true } : repair === "leaks" ? { leaks: true, errors: false } : NO_FIX

const addCounters = (into: Tally, from: Tally): void => {
  into.checkErrors += from.checkErrors
  into.corruptions += from.corruptions
  into.leaks += from.leaks
  into.corruptionsFixed += from.corruptionsFixed
  into.leaksFixed += from.leaksFixed
}

const toResult = (t: Tally, messages: ReadonlyArray<string>): CheckResult => ({
  checkErrors: t.checkErrors,
  corruptions: t.corruptions,
  leaks: t.leaks,
  corruptionsFixed: t.corruptionsFixed,
  leaksFixed: t.leaksFixed,
  imageEndOffset: t.imageEndOffset,
  totalClusters: t.totalClusters,
  allocatedClusters: t.allocatedClusters,
  fragmentedClusters: t.fragmentedClusters,
  compressedClusters: t.compressedClusters,
  messages: [...messages]
})

/**
 * The refcount part of a check (QEMU's qcow2_check_refcounts): count
 * references, compare, repair or rebuild, check COPIED flags. `force`
 * rebuilds the refcount structure even when it is intact.
 */
function checkRefcounts(io: Io, img: ImageInfo, fix: Fix, force: boolean, log: (m: string) => void, tally: Tally) {
  return Effect.gen(function* () {
    const cs = img.clusterSize
    const nbClusters = Math.ceil(img.fileSize / cs)
    if (nbClusters > INT_MAX) {
      tally.checkErrors++
      return yield* abort(EFBIG)
    }
    if (nbClusters > MAX_IMRT_CLUSTERS) {
      tally.checkErrors++
      return yield* abort(ENOMEM)
    }
    tally.totalClusters = img.totalClusters
    const p: Pass = {
      io,
      img,
      log,
      imrt: new Imrt(nbClusters, img.refcountMax),
      stored: new StoredRefcounts(io, img, log),
      metadata: new MetadataGuard(img),
      tally,
      rebuild: false
    }
    yield* calculateRefcounts(p, fix)
    const preCompare = { ...p.tally }
    let highest = yield* compareRefcounts(p, NO_FIX)
    if ((p.rebuild && fix.errors) || force) {
      const before = { ...p.tally }
      let freshLeaks = 0
      for (let round = 1; ; round++) {
        log("Rebuilding refcount structure")
        yield* rebuildRefcountStructure(p)
        p.tally.corruptions = 0
        p.tally.leaks = 0
        p.rebuild = false
        p.imrt.clear()
        yield* calculateRefcounts(p, NO_FIX)
        if (!fix.leaks) break
        const saved = p.tally
        p.tally = emptyTally()
        highest = yield* compareRefcounts(p, { leaks: true, errors: false })
        const broken = p.rebuild
        freshLeaks = p.tally.leaks
        p.tally = saved
        if (!broken) break
        // QEMU stops here. A rebuild that grew the file over structures referenced past its old end
        // (a file cut short) leaves them with refcount 0: counted again, the next rebuild covers them.
        if (round === MAX_REBUILDS) {
          log("ERROR rebuilt refcount structure is still broken")
          break
        }
      }
      if (p.tally.corruptions < before.corruptions) p.tally.corruptionsFixed += before.corruptions - p.tally.corruptions
      if (p.tally.leaks < before.leaks) p.tally.leaksFixed += before.leaks - p.tally.leaks
      p.tally.leaks += freshLeaks
    } else if (fix.leaks || fix.errors) {
      if (p.rebuild) {
        log("ERROR need to rebuild refcount structures")
        p.tally.checkErrors++
        return yield* abort(EIO)
      }
      if (p.tally.leaks !== 0 || p.tally.corruptions !== 0) {
        p.tally = preCompare
        highest = yield* compareRefcounts(p, fix)
      }
    }
    yield* checkOflagCopied(p, fix)
    p.tally.imageEndOffset = (highest + 1) * cs
    return p
  })
}

/** One check of the whole image (QEMU's qcow2_co_check_locked). */
function runCheck(io: Io, fix: Fix, force: boolean, log: (m: string) => void, partial: { tally: Tally }) {
  return Effect.gen(function* () {
    const warnings: Array<string> = []
    const img = yield* loadImage(io, warnings)
    warnings.forEach(log)
    const snapshotTally = emptyTally()
    const result = emptyTally()
    partial.tally = result
    const snapshotRead = yield* Effect.exit(readSnapshotTable(io, img, fix, snapshotTally, log))
    if (snapshotRead._tag === "Failure") {
      addCounters(result, snapshotTally)
      return yield* Effect.failCause(snapshotRead.cause)
    }
    const refTally = emptyTally()
    const refs = yield* Effect.exit(checkRefcounts(io, img, fix, force, log, refTally))
    const finalRef = refs._tag === "Success" ? refs.value.tally : refTally
    addCounters(result, finalRef)
    result.imageEndOffset = finalRef.imageEndOffset
    result.totalClusters = finalRef.totalClusters
    result.allocatedClusters = finalRef.allocatedClusters
    result.fragmentedClusters = finalRef.fragmentedClusters
    result.compressedClusters = finalRef.compressedClusters
    if (refs._tag === "Failure") {
      addCounters(result, snapshotTally)
      return yield* Effect.failCause(refs.cause)
    }
    if (snapshotTally.corruptions !== 0 && fix.errors) {
      const rewritten = yield* Effect.exit(rewriteSnapshotTable(refs.value))
      if (rewritten._tag === "Failure") {
        const aborted = rewritten.cause.reasons.find((r) => r._tag === "Fail")
        if (aborted !== undefined && aborted.error._tag === "CheckAborted") {
          snapshotTally.checkErrors++
          log(`ERROR failed to update snapshot table: ${aborted.error.strerror}`)
        }
        addCounters(result, snapshotTally)
        return yield* Effect.failCause(rewritten.cause)
      }
      snapshotTally.corruptionsFixed += snapshotTally.corruptions
      snapshotTally.corruptions = 0
    }
    addCounters(result, snapshotTally)
    // A repair that left no corruption marks the image clean and consistent (QEMU's qcow2_co_check_locked).
    if ((fix.leaks || fix.errors) && result.checkErrors === 0 && result.corruptions === 0) yield* markConsistent(io)
    return result
  })
}

/** The errno text QEMU's open fails with, for an image the check cannot open. */
const openStrerror = (reason: "NotQcow2" | "Unsupported" | "Corrupt"): string => (reason === "Unsupported" ? ENOTSUP : EINVAL)

/**
 * A repair opens the image read-write, and a writer clears the autoclear
 * feature bits it does not know (qcow2.txt "autoclear_features"; QEMU does
 * it on every read-write open, `qemu-img check -r` included; iotest 036).
 */
function clearUnknownAutoclearBits(io: Io): Effect.Effect<void, StorageError> {
  return Effect.gen(function* () {
    const fixed = yield* io.read(0, 104)
    const view = new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength)
    if (view.getUint32(0) !== QCOW2_MAGIC || view.getUint32(4) < 3) return
    const autoclear = view.getBigUint64(88)
    const known = autoclear & KNOWN_AUTOCLEAR_FEATURES
    if (known === autoclear) return
    const field = new Uint8Array(8)
    new DataView(field.buffer).setBigUint64(0, known)
    yield* io.write(88, field)
    yield* io.flush()
  })
}

function checkAndReport(storage: BlockStorageShape, fix: Fix, force: boolean): Effect.Effect<CheckResult, CheckError> {
  const io = new Io(storage)
  const messages: Array<string> = []
  let dropped = 0
  const log = (m: string) => {
    if (messages.length < MAX_MESSAGES) messages.push(m)
    else if (++dropped === 1) messages.push(OMITTED)
  }
  const partial = { tally: emptyTally() }
  const run = Effect.gen(function* () {
    if (fix.leaks) yield* clearUnknownAutoclearBits(io)
    const first = yield* runCheck(io, fix, force, log, partial)
    if (first.corruptionsFixed === 0 && first.leaksFixed === 0) return toResult(first, messages)
    // qemu-img reports a second, read-only check of the repaired image, with the first one's fixed counts.
    const second = yield* runCheck(io, NO_FIX, false, log, partial)
    second.corruptionsFixed = first.corruptionsFixed
    second.leaksFixed = first.leaksFixed
    return toResult(second, messages)
  })
  const location = storage.location
  return run.pipe(
    Effect.mapError((e: Failure): CheckError => {
      const common = { location, messages: [...messages], result: toResult(partial.tally, messages) }
      switch (e._tag) {
        case "CheckAborted":
          return new CheckError({
            ...common,
            reason: "Aborted",
            message: `Check failed: ${e.strerror}`,
            strerror: e.strerror,
            ...(e.reported !== undefined ? { reported: e.reported } : {})
          })
        case "StorageError":
          return new CheckError({
            ...common,
            reason: "Storage",
            message: e.message,
            strerror: EIO,
            ...(e.offset !== undefined ? { offset: e.offset } : {}),
            cause: e
          })
        case "OpenRefused":
          return new CheckError({
            ...common,
            reason: e.reason,
            message: e.message,
            strerror: openStrerror(e.reason),
            ...(e.offset !== undefined ? { offset: e.offset } : {}),
            cause: e.cause ?? e
          })
      }
    })
  )
}

/**
 * Checks a qcow2 image's metadata consistency like `qemu-img check`
 * (qcow2.txt "Host cluster management", "Cluster mapping"), optionally
 * repairing it like `qemu-img check -r leaks|all`. After a repair that fixed
 * something, the result is that of a second, read-only check, carrying the
 * fixed counts of the first (as qemu-img reports it). Fails with an
 * {@link CheckError}: reason "Aborted" where qemu-img prints "Check failed"
 * (with the findings printed before it), "Storage" when the file fails,
 * and the reason QEMU's open gives where qemu-img cannot open the image.
 */
export function checkQcow2(
  storage: BlockStorageShape,
  options?: { readonly repair?: "leaks" | "all" }
): Effect.Effect<CheckResult, CheckError> {
  return checkAndReport(storage, fixFor(options?.repair), false).pipe(
    Effect.withSpan("checkQcow2", { attributes: { location: storage.location, repair: options?.repair ?? "none" } })
  )
}

/**
 * Rebuilds the refcount table and blocks from the references found in the
 * image, whatever their state (QEMU's rebuild_refcount_structure, which
 * `qemu-img check -r all` runs when the refcount structure is broken), then
 * repairs what else `-r all` repairs. The result is reported as for
 * {@link checkQcow2} with repair "all".
 */
export function rebuildRefcounts(storage: BlockStorageShape): Effect.Effect<CheckResult, CheckError> {
  return checkAndReport(storage, { leaks: true, errors: true }, true).pipe(
    Effect.withSpan("rebuildRefcounts", { attributes: { location: storage.location } })
  )
}
