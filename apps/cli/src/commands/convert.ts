import * as fs from "node:fs"
import { availableParallelism } from "node:os"
import { Deferred, Effect, Exit, Fiber, Semaphore } from "effect"
import type { Image } from "@qcow2/image"
import { splitOptionList } from "../createopts.js"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, strerror, type CliFailure } from "../errors.js"
import { reportLine } from "../report.js"
import { creationRefusal } from "../qemu-filename.js"
import { checkBitmapsCopyable, checkTargetSupportsBitmaps, copyBitmaps } from "./convert-bitmaps.js"
import { countsForProgress, progressTotal } from "./convert-progress.js"
import { isNodeTarget, nodeRawSink, qcow2Sink, rawSink, WriteOrder, type Sink } from "./convert-sinks.js"
import { Progress } from "../progress.js"
import type { Secrets } from "../secrets.js"
import type { SnapshotSelector } from "./snapshot.js"

export interface ConvertOptions {
  readonly sources: ReadonlyArray<string>
  readonly target: string
  readonly format?: CliFormat
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
  /**
   * -W: writes to a qcow2 target may go out in any order. Otherwise they
   * get their clusters in guest order, one at a time (reads, and the data
   * of writes already placed, still overlap), as qemu-img writes them, so
   * new clusters are laid out as qemu-img lays them out.
   */
  readonly outOfOrder?: boolean
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
 * Bytes per request when compressing (at least a target cluster): each
 * request in flight holds its data and its compressed output, and 8
 * clusters of 64 KiB per request, three requests at once, still keep the
 * compression threads busy. 1 MiB instead of 2 took 6 MiB off the peak of
 * a `convert -c` (1 GiB mixed image), 512 KiB instead of 1 MiB another
 * 5 MiB of buffers (arrayBuffers 8.5 → 3.7 MiB), each at the same speed.
 */
const COMPRESSED_CHUNK = 512 * 1024

/** File requests Node's libuv thread pool runs at once (its default size). */
const FILE_REQUESTS_AT_ONCE = Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4)

/**
 * Whether `buf[start, end)` is all zeros. Past its first 16 bytes the range
 * is compared with itself shifted by 16 bytes (equal everywhere and zero at
 * the start means zero throughout): one memcmp over memory that is already
 * in cache, ~4x faster than comparing with a separate zero buffer (and ~3x
 * faster per byte on large ranges than Buffer's compare with offsets).
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
 *
 * Convert runs without V8's optimizing compiler (see entry.ts), where one
 * comparison costs a few µs whatever its length: a data block is told by its
 * first and last bytes without one, and once a block is zero the zeros that
 * follow are taken in steps of whole blocks that double each time (a 2 MiB
 * zero buffer in ~10 comparisons instead of 512).
 */
export const dataRuns = (buf: Uint8Array, length: number, granularity: number): Array<readonly [number, number]> => {
  if (granularity === 0) return length > 0 ? [[0, length]] : []
  const runs: Array<[number, number]> = []
  let runStart = -1
  let pos = 0
  while (pos < length) {
    const end = Math.min(length, pos + granularity)
    if (buf[pos] !== 0 || buf[end - 1] !== 0 || !isZeroRange(buf, pos, end)) {
      if (runStart < 0) runStart = pos
      pos = end
      continue
    }
    if (runStart >= 0) {
      runs.push([runStart, pos])
      runStart = -1
    }
    pos = end
    for (let step = 2 * granularity; pos < length; step *= 2) {
      const stepEnd = Math.min(length, pos + step)
      if (!isZeroRange(buf, pos, stepEnd)) break
      pos = stepEnd
    }
  }
  if (runStart >= 0) runs.push([runStart, length])
  return runs
}

interface Task {
  /** Position in guest order (tasks are made in order). */
  readonly seq: number
  /** The source the task starts in; a data task may run on into the next ones (a cluster of the target can span sources). */
  readonly sourceIndex: number
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

      const refusal = o.skipCreate ? undefined : creationRefusal(o.target)
      if (refusal !== undefined) return yield* Effect.fail(fail(refusal))
      let sink: Sink
      if (o.outFormat === "raw") {
        if (o.compress) return yield* Effect.fail(fail("Compression not supported for this file format"))
        if (o.backingFile !== undefined) return yield* Effect.fail(fail("Backing file not supported for file format 'raw'"))
        if (isNodeTarget(o.target, o.skipCreate)) sink = yield* nodeRawSink(o, total)
        else {
          const raw = yield* rawSink(o.target, total, o)
          yield* Effect.addFinalizer(() => Effect.sync(() => fs.closeSync((raw as Sink & { fd: number }).fd)))
          sink = raw
        }
      } else {
        const backingFormatOption = o.options.some((list) => splitOptionList(list).some(([name]) => name === "backing_fmt"))
        if (!o.skipCreate && o.backingFile !== undefined && o.backingFormat === undefined && !backingFormatOption) {
          return yield* Effect.fail(fail("Use of backing file requires explicit backing format"))
        }
        sink = yield* qcow2Sink(o, total)
      }
      if (o.bitmaps === true) yield* checkTargetSupportsBitmaps(sink.image, o.outFormat)
      const chunk = o.compress ? Math.max(COMPRESSED_CHUNK, sink.alignment) : CHUNK

      /**
       * The last block-status extent of the current source, [start, end)
       * (absolute): a raw file's data extent or a qcow2 image's run of
       * clusters usually spans many tasks, and is asked for once.
       */
      let known: { readonly source: Image; readonly start: number; readonly end: number; readonly kind: Task["status"] } | undefined
      const statusAt = (source: Image, offset: number, backingSize: number | undefined) => {
        if (known !== undefined && known.source === source && offset >= known.start && offset < known.end) {
          return Effect.succeed({ kind: known.kind, length: known.end - offset })
        }
        return Effect.map(sourceStatus(source, offset, source.virtualSize - offset, backingSize, o), (status) => {
          known = { source, start: offset, end: offset + Math.max(1, status.length), kind: status.kind }
          return status
        })
      }
      /**
       * A raw file's next extent: its block status knows its holes
       * (SEEK_DATA/SEEK_HOLE, as qemu-img asks), and a hole is skipped like
       * a zero extent. Data is read up to the next hole (rounded up to whole
       * target clusters, so a cluster is written in one piece) within one
       * chunk, and its zeros are found in the worker. The copy and the
       * progress's first pass classify by this one function.
       */
      const rawExtent = (source: Image, offset: number) =>
        Effect.gen(function* () {
          const chunkEnd = Math.min(source.virtualSize, (Math.floor(offset / chunk) + 1) * chunk)
          if (sink.backingSize !== undefined) return { kind: "data" as const, length: chunkEnd - offset }
          const status = yield* statusAt(source, offset, undefined)
          const holeEnd = Math.min(source.virtualSize, offset + status.length)
          if (status.kind === "zero") {
            const zeroEnd = holeEnd === source.virtualSize ? holeEnd : Math.floor(holeEnd / sink.alignment) * sink.alignment
            return zeroEnd > offset ? { kind: "zero" as const, length: zeroEnd - offset } : { kind: "data" as const, length: chunkEnd - offset }
          }
          const granule = Math.max(sink.alignment, sink.zeroGranularity)
          return { kind: "data" as const, length: Math.min(chunkEnd, Math.ceil(holeEnd / granule) * granule) - offset }
        })
      const extentOf = (source: Image, offset: number, remaining: number) =>
        source.format === "raw" ? rawExtent(source, offset) : sourceStatus(source, offset, remaining, sink.backingSize, o)
      const progress = o.progress && !o.quiet ? new Progress(yield* progressTotal(sources, o.sparseSize, extentOf)) : undefined
      const lock = yield* Semaphore.make(1)
      let sourceIndex = 0
      let sourceOffset = 0
      let targetBase = 0
      let taskCount = 0
      /** Next piece of work: one block-status extent (consecutive data extents merged), cut at chunk boundaries. */
      const nextTask: Effect.Effect<Task | undefined, CliFailure> = lock.withPermits(1)(
        Effect.gen(function* () {
          while (sourceIndex < sources.length && sourceOffset >= sources[sourceIndex]!.virtualSize) {
            // A data task that ended past its source's end (rounded up to a
            // whole target cluster) has covered the next source's start.
            sourceOffset -= sources[sourceIndex]!.virtualSize
            targetBase += sources[sourceIndex]!.virtualSize
            sourceIndex++
          }
          if (sourceIndex >= sources.length) return undefined
          const source = sources[sourceIndex]!
          const sourceName = o.sources[sourceIndex]!
          const remaining = source.virtualSize - sourceOffset
          // Chunks and alignment are the target's: concatenated sources need not end on a cluster boundary.
          const chunkEndInTarget = Math.min(total, (Math.floor((targetBase + sourceOffset) / chunk) + 1) * chunk)
          const chunkEnd = Math.min(source.virtualSize, chunkEndInTarget - targetBase)
          const lastSource = sourceIndex === sources.length - 1
          if (source.format === "raw") {
            const extent = yield* rawExtent(source, sourceOffset)
            const task: Task = { seq: taskCount++, sourceIndex, source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length: extent.length, status: extent.kind }
            sourceOffset += extent.length
            return task
          }
          const status = yield* statusAt(source, sourceOffset, sink.backingSize)
          const align = sink.alignment
          let extentEnd = sourceOffset + Math.max(1, Math.min(status.length, remaining))
          if (status.kind === "backing") {
            const task: Task = { seq: taskCount++, sourceIndex, source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length: extentEnd - sourceOffset, status: "backing" }
            sourceOffset = extentEnd
            return task
          }
          let zeroTask = status.kind === "zero"
          let end: number
          if (zeroTask) {
            // Keep later data aligned: a zero extent ends on an alignment boundary.
            end = extentEnd === source.virtualSize && lastSource ? extentEnd : Math.floor((targetBase + extentEnd) / align) * align - targetBase
            if (end <= sourceOffset) zeroTask = false
          }
          if (!zeroTask) {
            // Data extents that follow each other (compressed clusters, or
            // clusters apart on the host, each have their own) are one task.
            while (status.kind === "data" && extentEnd < chunkEnd) {
              const next = yield* statusAt(source, extentEnd, sink.backingSize)
              if (next.kind !== "data") break
              extentEnd += Math.max(1, next.length)
            }
            // Data: at most one chunk, cut at chunk boundaries, rounded up to
            // the alignment (past the source's end into the next source's
            // start, as qemu-img reads a cluster across sources).
            const rounded = Math.min(total, Math.ceil((targetBase + extentEnd) / align) * align) - targetBase
            end = Math.min(rounded, chunkEndInTarget - targetBase)
          }
          const length = end! - sourceOffset
          const task: Task = { seq: taskCount++, sourceIndex, source, sourceName, offset: sourceOffset, target: targetBase + sourceOffset, length, status: zeroTask ? "zero" : "data" }
          sourceOffset += length
          return task
        })
      )

      // -S 0 writes every byte read (qemu-img's !min_sparse), compressed or not; a
      // compressed target otherwise skips whole zero clusters (its buffer is one cluster).
      const granularity = o.sparseSize === 0 || o.copyRange === true ? 0 : sink.alignment > 1 ? sink.alignment : Math.max(o.sparseSize, sink.zeroGranularity)
      const order = o.outFormat === "qcow2" && !o.compress && o.outOfOrder !== true ? new WriteOrder() : undefined
      // In order, a data write lets the next task's write start once its
      // clusters are placed, with its data still going out (same layout as
      // one write at a time; the file requests overlap). A target made
      // here only: on an existing one (-n) the clusters a write frees when
      // it ends could be the next write's.
      const overlapWrites = order !== undefined && !o.skipCreate
      const worker = Effect.gen(function* () {
        // Compressing: shared memory, which the zstd workers read in place instead of a copy of each request.
        const buffer = o.compress ? Buffer.from(new SharedArrayBuffer(chunk)) : Buffer.allocUnsafe(chunk)
        const writing: Array<Fiber.Fiber<void, CliFailure>> = []
        for (;;) {
          const task = yield* nextTask
          if (task === undefined) return
          if (task.status === "zero" && o.sparseSize === 0) {
            // -S 0: qemu-img writes zeros as data (BLK_ZERO becomes BLK_DATA when min_sparse is 0), so the target is allocated.
            if (order !== undefined) yield* order.turn(task.seq)
            buffer.fill(0)
            for (let at = 0; at < task.length; at += chunk) yield* sink.writeData(task.target + at, buffer.subarray(0, Math.min(chunk, task.length - at)))
          } else if (task.status === "zero") {
            if (!sink.zeroIsFree) {
              if (order !== undefined) yield* order.turn(task.seq)
              yield* sink.writeZeroes(task.target, task.length)
            }
          } else if (task.status === "data") {
            const view = buffer.subarray(0, task.length)
            yield* readSpan(sources, task, view, o)
            const runs = dataRuns(buffer, task.length, granularity)
            if (order !== undefined && (runs.length > 0 || !sink.zeroIsFree)) yield* order.turn(task.seq)
            let covered = 0
            for (const [start, end] of runs) {
              if (start > covered && !sink.zeroIsFree) yield* sink.writeZeroes(task.target + covered, start - covered)
              if (overlapWrites) writing.push(yield* startPlacedWrite(sink, task.target + start, view.subarray(start, end)))
              else yield* sink.writeData(task.target + start, view.subarray(start, end))
              covered = end
            }
            if (covered < task.length && !sink.zeroIsFree) yield* sink.writeZeroes(task.target + covered, task.length - covered)
          }
          order?.done(task.seq)
          // The buffer is read into again only once its writes have ended.
          for (const fiber of writing.splice(0)) yield* Fiber.join(fiber)
          if (countsForProgress(task.status, o.sparseSize)) progress?.advance(task.length)
        }
      })
      // Node's thread pool runs 4 file requests at once (UV_THREADPOOL_SIZE):
      // more plain copy workers than that only add buffers (2 MiB each) to
      // the peak memory. A compressing request holds up to 32 clusters for
      // the compression pool, enough to keep one core busy: one per core and
      // one more to overlap reads and writes (each further one added ~5 MiB
      // to the peak and no speed, 256 MiB image, 2 cores).
      const workers = Math.max(1, Math.min(o.parallel, o.compress ? availableParallelism() + 1 : FILE_REQUESTS_AT_ONCE))
      yield* Effect.all(Array.from({ length: workers }, () => worker), { concurrency: "unbounded", discard: true })
      if (o.bitmaps === true) yield* copyBitmaps(sources[0]!, sink.image!, o.skipBrokenBitmaps === true)
      progress?.finish()
      yield* sink.finish
      return 0
    })
  )

/**
 * Starts a data write and waits only until its clusters are placed (see
 * Image.write's `placed`), or until it ends where the target does not say;
 * the fiber returned ends with the write.
 */
const startPlacedWrite = (sink: Sink, offset: number, data: Uint8Array): Effect.Effect<Fiber.Fiber<void, CliFailure>> =>
  Effect.gen(function* () {
    const placed = yield* Deferred.make<void>()
    const fiber = yield* Effect.forkChild(Effect.ensuring(sink.writeData(offset, data, placed), Deferred.done(placed, Exit.void)))
    yield* Deferred.await(placed)
    return fiber
  })

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
      if (o.salvage !== true) return Effect.fail(fail(`error while reading block status at offset ${offset}: ${strerror(e)}`))
      if (!o.quiet) reportLine(`warning: error while reading block status at offset ${offset}: ${strerror(e)}`)
      return Effect.succeed({ kind: "data" as const, length: Math.min(512, remaining) })
    })
  )

/** Reads a data task, from its source and on into the next ones where it runs past its source's end. */
const readSpan = (sources: ReadonlyArray<Image>, task: Task, view: Uint8Array, o: ConvertOptions): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    let index = task.sourceIndex
    let offset = task.offset
    let done = 0
    while (done < view.length) {
      const source = sources[index]!
      const piece = Math.min(view.length - done, source.virtualSize - offset)
      yield* readSource(source, offset, view.subarray(done, done + piece), o)
      done += piece
      index++
      offset = 0
    }
  })

/**
 * Where qemu-img convert's read of [offset, +length) fails: it reads one
 * block-status extent at a time, so its error names the start of the
 * extent that fails, where a task here joins the data extents that follow
 * each other into one read. Each extent is read again on its own (only
 * after a failure); `offset` when none fails this time (a failure that
 * does not repeat).
 */
const failingExtentStart = (source: Image, offset: number, view: Uint8Array): Effect.Effect<number> =>
  Effect.gen(function* () {
    let at = 0
    while (at < view.length) {
      const status = yield* Effect.option(source.blockStatus(offset + at, view.length - at))
      if (status._tag === "None") return offset + at
      const length = Math.max(1, Math.min(status.value.length, view.length - at))
      const failed = yield* Effect.isFailure(source.read(offset + at, view.subarray(at, at + length)))
      if (failed) return offset + at
      at += length
    }
    return offset
  })

/** Reads one source's range; with --salvage a failed read is retried sector by sector, and unreadable sectors read as zeros. */
const readSource = (source: Image, offset: number, view: Uint8Array, o: ConvertOptions): Effect.Effect<void, CliFailure> =>
  source.read(offset, view).pipe(
    Effect.catch((e) => {
      // QEMU gives the errno's text; a corruption event has printed the details.
      if (o.salvage !== true) {
        return Effect.flatMap(failingExtentStart(source, offset, view), (at) => Effect.fail(fail(`error while reading at byte ${at}: ${strerror(e)}`)))
      }
      return Effect.gen(function* () {
        for (let pos = 0; pos < view.length; pos += 512) {
          const sector = view.subarray(pos, Math.min(view.length, pos + 512))
          yield* source.read(offset + pos, sector).pipe(
            Effect.catch((err) =>
              Effect.sync(() => {
                if (!o.quiet) reportLine(`warning: error while reading offset ${offset + pos}: ${strerror(err)}`)
                sector.fill(0)
              })
            )
          )
        }
      })
    })
  )
