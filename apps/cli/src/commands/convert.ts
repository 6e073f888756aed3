import * as fs from "node:fs"
import { Effect, Semaphore } from "effect"
import { createImage, type Image, type ImageFormat } from "@qcow2/image"
import { parseCreateOptions, splitOptionList, toCreateOptions, formattingLine } from "../createopts.js"
import { lockDescriptor, open, unsafeCacheFiles, type ImageEnv } from "../env.js"
import { fail, strerror, type CliFailure } from "../errors.js"
import { reportLine } from "../report.js"
import { checkBitmapsCopyable, checkTargetSupportsBitmaps, copyBitmaps } from "./convert-bitmaps.js"
import { countsForProgress, progressTotal } from "./convert-progress.js"
import { Progress } from "../progress.js"
import type { Secrets } from "../secrets.js"
import type { SnapshotSelector } from "./snapshot.js"

export interface ConvertOptions {
  readonly sources: ReadonlyArray<string>
  readonly target: string
  readonly format?: ImageFormat
  readonly outFormat: "raw" | "qcow2"
  readonly options: ReadonlyArray<string>
  readonly compress: boolean
  /** Zero runs at least this long are left unwritten (qemu-img -S); 0 writes everything. */
  readonly sparseSize: number
  readonly progress: boolean
  readonly quiet: boolean
  /** -n: the target exists already; do not create it. */
  readonly skipCreate: boolean
  readonly targetIsZero: boolean
  /** Requests in flight (qemu-img -m). */
  readonly parallel: number
  readonly backingFile?: string
  readonly backingFormat?: string
  readonly secrets: Secrets
  /** Target cache mode (qemu-img -t): "unsafe" ignores flushes, like qemu-img convert's default. */
  readonly cache: string
  /** -l: read this internal snapshot of the (first) source. */
  readonly snapshot?: SnapshotSelector
  /** --salvage: unreadable sectors become zeros (with a warning) instead of ending the copy. */
  readonly salvage?: boolean
  /** -C: copy offloading; data goes over as it is, without looking for zeros (as a successful offload does). */
  readonly copyRange?: boolean
  /** `-U`: share the sources with every other user (the target is locked as usual). */
  readonly forceShare?: boolean
  /** --bitmaps: copy the persistent bitmaps; --skip-broken-bitmaps: leave inconsistent ones out. */
  readonly bitmaps?: boolean
  readonly skipBrokenBitmaps?: boolean
}

/** Bytes per request: large reads amortise the per-request cost. */
export const CHUNK = 2 * 1024 * 1024

/**
 * Whether `buf[start, end)` is all zeros. Past its first 16 bytes the range
 * is compared with itself shifted by 16 bytes (equal everywhere and zero at
 * the start means zero throughout): one memcmp over memory that is already
 * in cache, ~4x faster than comparing with a separate zero buffer.
 */
export const isZeroRange = (buf: Uint8Array, start: number, end: number): boolean => {
  if (end <= start) return true
  // Most data blocks have a non-zero first or last byte.
  if (buf[start] !== 0 || buf[end - 1] !== 0) return false
  const head = Math.min(end, start + 16)
  for (let i = start + 1; i < head; i++) if (buf[i] !== 0) return false
  return head === end || Buffer.compare(buf.subarray(start + 16, end), buf.subarray(start, end - 16)) === 0
}

/**
 * Non-zero runs of `buf[0, length)`, where a zero run counts only if it
 * covers whole `granularity`-sized aligned blocks (qemu-img -S). With
 * granularity 0 everything is one run.
 */
export const dataRuns = (buf: Uint8Array, length: number, granularity: number): Array<readonly [number, number]> => {
  if (granularity === 0) return length > 0 ? [[0, length]] : []
  const runs: Array<[number, number]> = []
  let runStart = -1
  for (let pos = 0; pos < length; pos += granularity) {
    if (isZeroRange(buf, pos, Math.min(length, pos + granularity))) {
      if (runStart >= 0) {
        runs.push([runStart, pos])
        runStart = -1
      }
    } else if (runStart < 0) {
      runStart = pos
    }
  }
  if (runStart >= 0) runs.push([runStart, length])
  return runs
}

interface Task {
  readonly source: Image
  readonly sourceName: string
  /** Guest offset in the source. */
  readonly offset: number
  /** Offset in the target. */
  readonly target: number
  readonly length: number
  /**
   * What to do (qemu-img's BLK_DATA / BLK_ZERO / BLK_BACKING_FILE): copy
   * data, make zeros (nothing to read), or leave the target unallocated so
   * that its backing file shows.
   */
  readonly status: "data" | "zero" | "backing"
}

/** Where the converted bytes go. */
interface Sink {
  readonly writeData: (offset: number, data: Uint8Array) => Effect.Effect<void, CliFailure>
  /** Called for zero ranges that must be written explicitly (-S 0, or a target that is not known to be zero). */
  readonly writeZeroes: (offset: number, length: number) => Effect.Effect<void, CliFailure>
  /** A zero range can be skipped because the target already reads as zeros there. */
  readonly zeroIsFree: boolean
  /** Writes must start and end on multiples of this (cluster size for compressed output), else 1. */
  readonly alignment: number
  /**
   * Zero detection need not be finer than this: a qcow2 target allocates
   * whole clusters anyway, so a cluster is skipped only when all of it is
   * zero (qemu-img convert aligns its zero detection to the target cluster
   * size in the same way), and whole clusters are written in one piece.
   */
  readonly zeroGranularity: number
  /**
   * Size of the new target's backing file when it has one (zeros past it
   * need no writing), -1 when the backing size does not count; undefined
   * without a backing file.
   */
  readonly backingSize?: number
  /** The target image (qcow2 targets), for copying bitmaps after the data. */
  readonly image?: Image
}

const writeAll = (fd: number, data: Uint8Array, position: number, target: string): Effect.Effect<void, CliFailure> =>
  Effect.callback<void, CliFailure>((resume) => {
    let done = 0
    const step = (): void => {
      fs.write(fd, data, done, data.length - done, position + done, (err, n) => {
        if (err !== null) {
          resume(Effect.fail(fail(`error while writing at byte ${position + done}: ${err.message} (${target})`)))
          return
        }
        done += n
        if (done < data.length) step()
        else resume(Effect.void)
      })
    }
    step()
  })

/** Locks a raw target descriptor (see lockDescriptor); on a refusal the descriptor is closed. */
const lockTarget = (fd: number, target: string, role: "create" | "raw", refused: (message: string) => string): Effect.Effect<void, CliFailure> =>
  Effect.flatMap(lockDescriptor(fd, target, role), (error) =>
    error === undefined ? Effect.void : Effect.sync(() => fs.closeSync(fd)).pipe(Effect.andThen(Effect.fail(fail(refused(error.message)))))
  )

/** A raw file target: positional writes, holes for skipped zeros, final size set by ftruncate. */
const rawSink = (target: string, size: number, o: ConvertOptions): Effect.Effect<Sink, CliFailure, never> =>
  Effect.gen(function* () {
    const attempt = <A>(f: () => A) => Effect.try({ try: f, catch: (e) => fail(`${target}: ${e instanceof Error ? e.message : String(e)}`) })
    /** `f` on `fd`; the descriptor is closed if it fails. */
    const onFd = (fd: number, f: () => void) => Effect.tapError(attempt(f), () => Effect.sync(() => fs.closeSync(fd)))
    const { O_CREAT, O_RDWR } = fs.constants
    // Like qemu-img: create on one descriptor (locked, then truncated),
    // then write through another. On ext4, closing a descriptor that
    // truncated a file to zero starts writeback of everything written
    // through it (auto_da_alloc), which made replacing an existing target
    // ~0.1-0.4 s slower; the creating descriptor is closed before any data
    // is written. O_RDWR, not write-only: a write-only open of a FIFO
    // waits for a reader.
    if (!o.skipCreate) {
      const created = yield* attempt(() => fs.openSync(target, O_RDWR | O_CREAT))
      yield* lockTarget(created, target, "create", (m) => `${target}: error while converting raw: ${m}`)
      yield* onFd(created, () => fs.ftruncateSync(created, 0))
      fs.closeSync(created)
    }
    const fd = yield* attempt(() => fs.openSync(target, O_RDWR))
    yield* lockTarget(fd, target, "raw", (m) => `Could not open '${target}': ${m}`)
    if (!o.skipCreate) yield* onFd(fd, () => fs.ftruncateSync(fd, size))
    return fd
  }).pipe(
    Effect.map((fd): Sink & { fd: number } => {
      const zeros = Buffer.alloc(CHUNK)
      return {
        fd,
        zeroIsFree: !o.skipCreate || o.targetIsZero,
        alignment: 1,
        zeroGranularity: 1,
        writeData: (offset, data) => writeAll(fd, data, offset, target),
        writeZeroes: (offset, length) =>
          Effect.gen(function* () {
            for (let pos = offset; pos < offset + length; pos += CHUNK) {
              yield* writeAll(fd, zeros.subarray(0, Math.min(CHUNK, offset + length - pos)), pos, target)
            }
          })
      }
    })
  )

/** `qcow2 convert`: copies the guest view of one or more images (concatenated) into a raw or qcow2 target. */
export const runConvert = (o: ConvertOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const sources: Image[] = []
      for (const name of o.sources) {
        sources.push(yield* open(name, { readOnly: true, format: o.format, passphrase: o.secrets.passphrase, forceShare: o.forceShare === true }))
      }
      if (o.snapshot !== undefined) {
        const { loadConvertSnapshot } = yield* Effect.promise(() => import("./snapshot.js"))
        yield* loadConvertSnapshot(sources, o.snapshot)
      }
      if (sources.length > 1 && o.backingFile !== undefined) {
        return yield* Effect.fail(fail("Having a backing file for the target makes no sense when concatenating multiple input images"))
      }
      const total = sources.reduce((n, s) => n + s.virtualSize, 0)
      if (o.bitmaps === true) yield* checkBitmapsCopyable(sources, o.skipBrokenBitmaps === true)

      let sink: Sink
      if (o.outFormat === "raw") {
        if (o.compress) return yield* Effect.fail(fail("Compression not supported for this file format"))
        if (o.backingFile !== undefined) return yield* Effect.fail(fail("Backing file not supported for file format 'raw'"))
        const raw = yield* rawSink(o.target, total, o)
        yield* Effect.addFinalizer(() => Effect.sync(() => fs.closeSync((raw as Sink & { fd: number }).fd)))
        sink = raw
      } else {
        const backingFormatOption = o.options.some((list) => splitOptionList(list).some(([name]) => name === "backing_fmt"))
        if (!o.skipCreate && o.backingFile !== undefined && o.backingFormat === undefined && !backingFormatOption) {
          return yield* Effect.fail(fail("Use of backing file requires explicit backing format"))
        }
        sink = yield* qcow2Sink(o, total)
      }
      if (o.bitmaps === true) yield* checkTargetSupportsBitmaps(sink.image, o.outFormat)

      /**
       * A raw file's next extent: its block status knows its holes
       * (SEEK_DATA/SEEK_HOLE, as qemu-img asks), and a hole is skipped like a
       * zero extent. Data is read in whole chunks, and its zeros found once,
       * in the worker.
       */
      const rawExtent = (source: Image, offset: number, remaining: number) =>
        Effect.gen(function* () {
          if (sink.backingSize === undefined) {
            const status = yield* sourceStatus(source, offset, remaining, undefined, o)
            const holeEnd = Math.min(source.virtualSize, offset + status.length)
            const end = holeEnd === source.virtualSize ? holeEnd : Math.floor(holeEnd / sink.alignment) * sink.alignment
            if (status.kind === "zero" && end > offset) return { kind: "zero" as const, length: end - offset }
          }
          return { kind: "data" as const, length: Math.min(source.virtualSize, (Math.floor(offset / CHUNK) + 1) * CHUNK) - offset }
        })
      const extentOf = (source: Image, offset: number, remaining: number) =>
        source.format === "raw" ? rawExtent(source, offset, remaining) : sourceStatus(source, offset, remaining, sink.backingSize, o)
      const progress = o.progress && !o.quiet ? new Progress(yield* progressTotal(sources, o.sparseSize, extentOf)) : undefined
      const lock = yield* Semaphore.make(1)
      let sourceIndex = 0
      let sourceOffset = 0
      let targetBase = 0
      /** Next piece of work: one block-status extent, cut at CHUNK boundaries. */
      const nextTask: Effect.Effect<Task | undefined, CliFailure> = lock.withPermits(1)(
        Effect.gen(function* () {
          while (sourceIndex < sources.length && sourceOffset >= sources[sourceIndex]!.virtualSize) {
            targetBase += sources[sourceIndex]!.virtualSize
            sourceIndex++
            sourceOffset = 0
          }
          if (sourceIndex >= sources.length) return undefined
          const source = sources[sourceIndex]!
          const sourceName = o.sources[sourceIndex]!
          const remaining = source.virtualSize - sourceOffset
          if (source.format === "raw") {
            const extent = yield* rawExtent(source, sourceOffset, remaining)
            const task: Task = { source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length: extent.length, status: extent.kind }
            sourceOffset += extent.length
            return task
          }
          const status = yield* sourceStatus(source, sourceOffset, remaining, sink.backingSize, o)
          const align = sink.alignment
          const extentEnd = sourceOffset + Math.max(1, Math.min(status.length, remaining))
          if (status.kind === "backing") {
            const task: Task = { source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length: extentEnd - sourceOffset, status: "backing" }
            sourceOffset = extentEnd
            return task
          }
          let zeroTask = status.kind === "zero"
          let end: number
          if (zeroTask) {
            // Keep later data aligned: a zero extent ends on an alignment boundary.
            end = extentEnd === source.virtualSize ? extentEnd : Math.floor(extentEnd / align) * align
            if (end <= sourceOffset) zeroTask = false
          }
          if (!zeroTask) {
            // Data: at most one CHUNK, cut at CHUNK boundaries, rounded up to the alignment.
            const rounded = Math.min(source.virtualSize, Math.ceil(extentEnd / align) * align)
            end = Math.min(rounded, (Math.floor(sourceOffset / CHUNK) + 1) * CHUNK)
          }
          const length = end! - sourceOffset
          const task: Task = { source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length, status: zeroTask ? "zero" : "data" }
          sourceOffset += length
          return task
        })
      )

      const granularity = sink.alignment > 1 ? sink.alignment : o.sparseSize === 0 || o.copyRange === true ? 0 : Math.max(o.sparseSize, sink.zeroGranularity)
      const worker = Effect.gen(function* () {
        const buffer = Buffer.allocUnsafe(CHUNK)
        for (;;) {
          const task = yield* nextTask
          if (task === undefined) return
          if (task.status === "zero" && o.sparseSize === 0) {
            // -S 0: qemu-img writes zeros as data (BLK_ZERO becomes BLK_DATA when min_sparse is 0), so the target is allocated.
            buffer.fill(0)
            for (let at = 0; at < task.length; at += CHUNK) yield* sink.writeData(task.target + at, buffer.subarray(0, Math.min(CHUNK, task.length - at)))
          } else if (task.status === "zero") {
            if (!sink.zeroIsFree) yield* sink.writeZeroes(task.target, task.length)
          } else if (task.status === "data") {
            const view = buffer.subarray(0, task.length)
            yield* readSource(task, view, o)
            const runs = dataRuns(buffer, task.length, granularity)
            let covered = 0
            for (const [start, end] of runs) {
              if (start > covered && !sink.zeroIsFree) yield* sink.writeZeroes(task.target + covered, start - covered)
              yield* sink.writeData(task.target + start, view.subarray(start, end))
              covered = end
            }
            if (covered < task.length && !sink.zeroIsFree) yield* sink.writeZeroes(task.target + covered, task.length - covered)
          }
          if (countsForProgress(task.status, o.sparseSize)) progress?.advance(task.length)
        }
      })
      const workers = Math.max(1, Math.min(o.parallel, 16))
      yield* Effect.all(Array.from({ length: workers }, () => worker), { concurrency: "unbounded", discard: true })
      if (o.bitmaps === true) yield* copyBitmaps(sources[0]!, sink.image!, o.skipBrokenBitmaps === true)
      progress?.finish()
      return 0
    })
  )

/**
 * Status of the source extent at `offset` as qemu-img convert sees it. With
 * a backing file for the target only what the source's top image holds is
 * copied (status above the source's own backing file); the rest is left to
 * the target's backing file, and so are zeros past its end.
 */
const sourceStatus = (
  source: Image,
  offset: number,
  remaining: number,
  backingSize: number | undefined,
  o: ConvertOptions
): Effect.Effect<{ readonly kind: Task["status"]; readonly length: number }, CliFailure> =>
  source.blockStatus(offset, remaining).pipe(
    Effect.map((s) => {
      if (backingSize === undefined) return { kind: s.zero ? ("zero" as const) : ("data" as const), length: s.length }
      let length = s.length
      if (backingSize >= 0 && offset < backingSize) length = Math.min(length, backingSize - offset)
      // Allocated in the top image, or zeros no backing file of the source provides.
      const own = source.backing === undefined || (s.depth === 0 && (s.present || s.zero))
      if (!own) return { kind: "backing" as const, length }
      if (!s.zero) return { kind: "data" as const, length }
      return { kind: backingSize >= 0 && offset >= backingSize ? ("backing" as const) : ("zero" as const), length }
    }),
    Effect.catch((e) => {
      if (o.salvage !== true) return Effect.fail(fail(`error while reading block status at offset ${offset}: ${e.message}`))
      if (!o.quiet) reportLine(`warning: error while reading block status at offset ${offset}: ${strerror(e)}`)
      return Effect.succeed({ kind: "data" as const, length: Math.min(512, remaining) })
    })
  )

/** Reads a data task; with --salvage a failed read is retried sector by sector, and unreadable sectors read as zeros. */
const readSource = (task: Task, view: Uint8Array, o: ConvertOptions): Effect.Effect<void, CliFailure> =>
  task.source.read(task.offset, view).pipe(
    Effect.catch((e) => {
      if (o.salvage !== true) return Effect.fail(fail(`error while reading at byte ${task.offset}: ${e.message}`))
      return Effect.gen(function* () {
        for (let pos = 0; pos < view.length; pos += 512) {
          const sector = view.subarray(pos, Math.min(view.length, pos + 512))
          yield* task.source.read(task.offset + pos, sector).pipe(
            Effect.catch((err) =>
              Effect.sync(() => {
                if (!o.quiet) reportLine(`warning: error while reading offset ${task.offset + pos}: ${strerror(err)}`)
                sector.fill(0)
              })
            )
          )
        }
      })
    })
  )

/** A qcow2 target: created with the -o options, written through the driver. */
const qcow2Sink = (o: ConvertOptions, total: number) =>
  Effect.gen(function* () {
    if (o.cache === "unsafe") unsafeCacheFiles.add(o.target)
    const lists = [...o.options]
    if (o.backingFile !== undefined) lists.push(`backing_file=${o.backingFile.replace(/,/g, ",,")}`)
    if (o.backingFormat !== undefined) lists.push(`backing_fmt=${o.backingFormat.replace(/,/g, ",,")}`)
    const parsed = parseCreateOptions("qcow2", lists)
    if (!parsed.ok) return yield* Effect.fail(fail(parsed.message))
    if (!parsed.values.has("size")) parsed.values.set("size", String(Math.ceil(total / 512) * 512))
    const keyId = parsed.values.get("encrypt.key-secret")
    const passphrase = keyId !== undefined ? o.secrets.byId.get(keyId) : o.secrets.passphrase
    const built = toCreateOptions(parsed.values, passphrase)
    if (!built.ok) return yield* Effect.fail(fail(`${o.target}: ${built.message}`))
    if (!o.skipCreate) {
      yield* Effect.scoped(createImage(o.target, built.options)).pipe(
        Effect.mapError((e) =>
          // A lock conflict is reported before the creation is announced (qemu-img's message has no "Formatting" part).
          fail(`${o.target}: error while converting qcow2: ${e.message}${e.reason === "Locked" ? "" : ` (${formattingLine(o.target, "qcow2", parsed.values)})`}`)
        )
      )
    }
    // Compression runs on a pool of worker threads sized to the cores; many
    // clusters are in flight at once and each result lands in its own cluster.
    const pool = o.compress ? yield* Effect.flatMap(Effect.promise(() => import("@qcow2/compress/node")), (m) => m.makeCompressionPool({})) : undefined
    const target = yield* open(o.target, {
      readOnly: false,
      format: "qcow2",
      passphrase,
      ...(pool !== undefined ? { compress: (type: 0 | 1, cluster: Uint8Array, level: number | undefined) => pool.compress(type, cluster, level) } : {})
    })
    if (target.virtualSize < total) return yield* Effect.fail(fail("Target image is smaller than the source"))
    const clusterSize = target.clusterSize
    const wrap = <A>(offset: number, eff: Effect.Effect<A, { readonly message: string }>) =>
      eff.pipe(Effect.mapError((e) => fail(`error while writing at byte ${offset}: ${e.message}`)))
    const sink: Sink = {
      image: target,
      // A preallocated encrypted image does not read as zeros (QEMU's qcow2_has_zero_init).
      zeroIsFree: (!o.skipCreate || o.targetIsZero) && o.backingFile === undefined && !(passphrase !== undefined && parsed.values.has("encrypt.format") && (parsed.values.get("preallocation") ?? "off") !== "off"),
      alignment: o.compress ? clusterSize : 1,
      zeroGranularity: clusterSize,
      writeData: (offset, data) =>
        o.compress
          ? Effect.gen(function* () {
              // Whole clusters go compressed in one request (compressed in
              // parallel); a partial cluster at either end is written plainly.
              const end = offset + data.length
              const fullStart = Math.ceil(offset / clusterSize) * clusterSize
              let fullEnd = Math.floor(end / clusterSize) * clusterSize
              if (end === target.virtualSize && end > fullEnd && fullStart <= fullEnd) fullEnd = end
              if (fullStart >= fullEnd) return yield* wrap(offset, target.write(offset, data))
              if (fullStart > offset) yield* wrap(offset, target.write(offset, data.subarray(0, fullStart - offset)))
              yield* wrap(fullStart, target.writeCompressed(fullStart, data.subarray(fullStart - offset, fullEnd - offset)))
              if (end > fullEnd) yield* wrap(fullEnd, target.write(fullEnd, data.subarray(fullEnd - offset)))
            })
          : wrap(offset, target.write(offset, data)),
      writeZeroes: (offset, length) => wrap(offset, target.writeZeroes(offset, length, { unmap: o.sparseSize !== 0 })),
      ...(o.backingFile !== undefined ? { backingSize: !o.skipCreate && target.backing !== undefined ? target.backing.virtualSize : -1 } : {})
    }
    yield* Effect.addFinalizer(() => target.flush().pipe(Effect.ignore))
    return sink
  })
