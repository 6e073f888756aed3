/**
 * `qcow2 commit`: qemu-img commit. The overlay's data (and that of the
 * images between it and the base) goes into the base the way QEMU's commit
 * job (an active mirror into the base) copies it, then the overlay is
 * emptied unless -d or -b.
 */
import * as nodePath from "node:path"
import * as fs from "node:fs"
import { Effect } from "effect"
import { probedRawWarning, type BlockStatus, type Image, type ImageError } from "@qcow2/image"
import { driverReport, open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, strerror, type CliFailure } from "../errors.js"
import { print } from "../output.js"
import { Progress } from "../progress.js"

export interface CommitOptions {
  readonly file: string
  readonly format?: CliFormat
  /** -b: the image of the chain to commit into (default: the immediate backing file). */
  readonly base?: string
  /** -d (implied by -b): leave the overlay's data in place. */
  readonly drop: boolean
  readonly progress: boolean
  readonly quiet: boolean
  readonly passphrase?: Uint8Array
}

/** Bytes one copy request moves at most (QEMU's mirror MAX_IO_BYTES). */
const MAX_IO = 1024 * 1024
/** Dirty chunks handled in one iteration at most (QEMU's mirror buffer, 16 MiB). */
const BUFFER = 16 * 1024 * 1024

const realpath = (name: string): string | undefined => {
  try {
    return fs.realpathSync(name)
  } catch {
    return undefined
  }
}

/**
 * The chain image `name` designates, as QEMU's bdrv_find_backing_image
 * matches it: the same file (canonical paths), with a relative `name`
 * taken relative to each overlay in turn.
 */
export const findInChain = (top: Image, name: string): { readonly image: Image; readonly depth: number } | undefined => {
  let overlay = top
  for (let depth = 1; overlay.backing !== undefined; depth++) {
    const below = overlay.backing
    const candidate = realpath(nodePath.isAbsolute(name) ? name : nodePath.join(nodePath.dirname(overlay.location), name))
    if (candidate !== undefined && candidate === realpath(below.location)) return { image: below, depth }
    overlay = below
  }
  return undefined
}

/**
 * Whether an extent is allocated in an image above depth `base` (QEMU's
 * bdrv_is_allocated_above down to the base's overlay): data or zeros of one
 * of those images, or zeros read past the end of a shorter one of them
 * (a status that stops at depth d without data reads past the end of d + 1).
 */
export const allocatedAbove = (s: BlockStatus, base: number): boolean => (s.present ? s.depth < base : s.depth + 1 < base)

/** The dirty-bitmap granularity QEMU's mirror uses for a target: its cluster size within 4 KiB..64 KiB (64 KiB for raw). */
const granularityOf = (base: Image): number => (base.format === "raw" ? 65536 : Math.min(65536, Math.max(4096, base.clusterSize)))

const jobFailed = (e: ImageError) => fail(`Block job failed: ${strerror(e)}`)

/** Runs the commit job: every chunk allocated above `depth` is written into `base`. */
const commitJob = (top: Image, base: Image, depth: number, progress: Progress | undefined): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    const length = top.virtualSize
    if (length > base.virtualSize) yield* base.truncate(length).pipe(Effect.mapError(jobFailed))
    const g = granularityOf(base)
    // The dirty chunks: allocated in the overlay or an image between it and the base.
    const dirty: Array<[number, number]> = []
    for (let offset = 0; offset < length; ) {
      const s = yield* top.blockStatus(offset, length - offset).pipe(Effect.mapError(jobFailed))
      const n = Math.max(1, Math.min(s.length, length - offset))
      if (allocatedAbove(s, depth)) {
        const start = Math.floor(offset / g) * g
        const end = Math.min(Math.ceil((offset + n) / g) * g, Math.ceil(length / g) * g)
        const last = dirty[dirty.length - 1]
        if (last !== undefined && last[1] >= start) last[1] = Math.max(last[1], end)
        else dirty.push([start, end])
      }
      offset += n
    }
    const total = dirty.reduce((sum, [s, e]) => sum + (e - s), 0)
    const buffer = new Uint8Array(MAX_IO)
    for (const [runStart, runEnd] of dirty) {
      for (let iteration = runStart; iteration < runEnd; ) {
        const iterationEnd = Math.min(runEnd, iteration + BUFFER)
        let offset = iteration
        while (offset < iterationEnd && offset < length) {
          const s = yield* top.blockStatus(offset, Math.min(iterationEnd, length) - offset).pipe(Effect.mapError(jobFailed))
          let io = s.data ? Math.min(s.length, MAX_IO) : s.length
          io -= io % g
          let method: "copy" | "zero" | "discard" = "copy"
          if (io < g) io = g
          else if (!s.data) method = s.zero ? "zero" : "discard"
          io = Math.min(io, length - offset, iterationEnd - offset)
          if (method === "copy") {
            for (let pos = offset; pos < offset + io; pos += MAX_IO) {
              const view = buffer.subarray(0, Math.min(MAX_IO, offset + io - pos))
              yield* top.read(pos, view).pipe(Effect.mapError(jobFailed))
              yield* base.write(pos, view).pipe(Effect.mapError(jobFailed))
            }
          } else if (method === "zero") {
            yield* base.writeZeroes(offset, io, { unmap: true }).pipe(Effect.mapError(jobFailed))
          } else {
            yield* base.discard(offset, io).pipe(Effect.mapError(jobFailed))
          }
          offset += io
          progress?.advance(total === 0 ? 0 : (io * 100) / total)
        }
        iteration = iterationEnd
      }
    }
    yield* base.flush().pipe(Effect.mapError(jobFailed))
  })

/** `qcow2 commit`: as qemu-img commit, "Image committed." on success. */
export const runCommit = (o: CommitOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    const drop = o.drop || o.base !== undefined
    // Find the base on a read-only look at the chain, then open the overlay
    // and that one image of its chain read-write (QEMU reopens the base).
    const target = yield* Effect.scoped(
      Effect.gen(function* () {
        const top = yield* open(o.file, { readOnly: true, format: o.format, passphrase: o.passphrase })
        if (o.base !== undefined) {
          const found = findInChain(top, o.base)
          if (found === undefined) return yield* Effect.fail(fail(`Did not find '${o.base}' in the backing chain of '${o.file}'`))
          return { location: found.image.location, depth: found.depth }
        }
        if (top.backing === undefined) {
          // QEMU opened it for writing first: a probed raw image warns before the refusal.
          if (top.format === "raw" && o.format === undefined) driverReport(probedRawWarning(o.file))
          return yield* Effect.fail(fail("Image does not have a backing file"))
        }
        // The name the backing file was opened by (a json: name stands for its file).
        return { location: top.backingFileResolved ?? top.backing.location, depth: 1 }
      })
    )
    return yield* Effect.scoped(
      Effect.gen(function* () {
        const top = yield* open(o.file, { readOnly: false, format: o.format, passphrase: o.passphrase, readWriteBacking: target.location })
        let base: Image | undefined = top
        for (let i = 0; i < target.depth && base !== undefined; i++) base = base.backing
        if (base === undefined) return yield* Effect.fail(fail("Image does not have a backing file"))
        const progress = o.progress && !o.quiet ? new Progress(100) : undefined
        yield* commitJob(top, base, target.depth, progress)
        if (!drop) {
          const emptyFailed = (e: ImageError) => fail(`Failed to empty ${o.file}: ${strerror(e)}`)
          yield* top.makeEmpty().pipe(Effect.catch((e) => (e.reason === "Unsupported" ? Effect.void : Effect.fail(emptyFailed(e)))))
          yield* top.flush().pipe(Effect.mapError(emptyFailed))
        }
        progress?.finish()
        if (!o.quiet) print("Image committed.\n")
        return 0
      })
    )
  })
