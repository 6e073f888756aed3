/**
 * The targets of `qcow2 convert` (a raw file, a qcow2 image written through
 * the driver) and the order its writes go out in.
 */
import * as fs from "node:fs"
import { availableParallelism } from "node:os"
import { type Deferred, Effect, type Scope } from "effect"
import { createImage, type Image } from "@qcow2/image"
import { parseCreateOptions, toCreateOptions, formattingLine } from "../createopts.js"
import { parseNbdName } from "@qcow2/nbd/client"
import { lockDescriptor, open, openNamed, unsafeCacheFiles, type ImageEnv } from "../env.js"
import { fail, nodeErrorText, strerror, type CliFailure } from "../errors.js"
import { reportLine } from "../report.js"
import type { ConvertOptions } from "./convert.js"

/** Largest write of zeros to a raw target. */
const ZERO_WRITE = 2 * 1024 * 1024

/** Where the converted bytes go. */
export interface Sink {
  /** `placed`: see Image.write (completed, where the target allocates, once the write's clusters are decided). */
  readonly writeData: (offset: number, data: Uint8Array, placed?: Deferred.Deferred<void>) => Effect.Effect<void, CliFailure>
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
  /**
   * Writes back what the target still caches and, unless the cache mode is
   * unsafe, flushes it; fails when that fails. qemu-img 7.2 prints the same
   * "Failed to flush the … cache" lines but exits 0 with the data possibly
   * lost; this toolkit exits 1.
   */
  readonly finish: Effect.Effect<void, CliFailure>
}

/** The message of a target flush that failed (qemu-img 7.2 has none: it ignores the failure). */
const flushFailure = (text: string): CliFailure => fail(`error while flushing the target: ${text}`)



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
export const rawSink = (name: string, size: number, o: ConvertOptions): Effect.Effect<Sink, CliFailure, never> => {
  // `file:PATH` names the file protocol explicitly.
  const target = name.startsWith("file:") ? name.slice("file:".length) : name
  return Effect.gen(function* () {
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
      const zeros = Buffer.alloc(ZERO_WRITE)
      return {
        fd,
        zeroIsFree: !o.skipCreate || o.targetIsZero,
        alignment: 1,
        zeroGranularity: 1,
        // qemu-img's file driver syncs on close unless the cache mode is unsafe.
        finish:
          o.cache === "unsafe"
            ? Effect.void
            : Effect.callback<void, CliFailure>((resume) => fs.fdatasync(fd, (err) => resume(err === null ? Effect.void : Effect.fail(flushFailure(nodeErrorText(err)))))),
        writeData: (offset, data) => writeAll(fd, data, offset, target),
        writeZeroes: (offset, length) =>
          Effect.gen(function* () {
            for (let pos = offset; pos < offset + length; pos += ZERO_WRITE) {
              yield* writeAll(fd, zeros.subarray(0, Math.min(ZERO_WRITE, offset + length - pos)), pos, target)
            }
          })
      }
    })
  )
}

/**
 * Whether a raw target is a block node rather than a plain file: an NBD
 * export (`nbd:…`, `nbd://…`, `json:{"driver":"nbd",…}`), or with -n a
 * `json:{…}` or `blkdebug:CONFIG:FILE` name. These open through the storage opener like sources;
 * plain files keep rawSink's direct descriptor.
 */
export const isNodeTarget = (target: string, skipCreate: boolean): boolean =>
  parseNbdName(target) !== undefined || (skipCreate && (target.startsWith("json:") || target.startsWith("blkdebug:")))

/**
 * Opens the NBD export a command would create (qemu-img convert and dd
 * without -n): QEMU's nbd protocol driver cannot create, so it opens the
 * export instead, and a failure says both, after `what` ("error while
 * converting raw").
 */
export const openNbdForCreation = (name: string, what: string) =>
  openNamed(name, { readOnly: false, format: "raw" }).pipe(
    Effect.map(({ image }) => image),
    Effect.mapError(({ error }) => fail(`${name}: ${what}: Protocol driver 'nbd' does not support image creation, and opening the image failed: ${error.message}`))
  )

/**
 * A raw target opened through the storage opener (see isNodeTarget). An
 * NBD export cannot be created: without -n it must be at least as large as
 * the input (QEMU's nbd driver: "Cannot grow NBD nodes"), and as it does not
 * read as zeros (no has_zero_init), zero ranges are written with the
 * store's writeZeroes (NBD_CMD_WRITE_ZEROES) unless --target-is-zero.
 */
export const nodeRawSink = (o: ConvertOptions, total: number): Effect.Effect<Sink, CliFailure, ImageEnv | Scope.Scope> =>
  Effect.gen(function* () {
    const target = o.skipCreate ? yield* open(o.target, { readOnly: false, format: "raw" }) : yield* openNbdForCreation(o.target, "error while converting raw")
    if (target.virtualSize < total) {
      return yield* Effect.fail(fail(o.skipCreate ? "output file is smaller than input file" : `${o.target}: error while converting raw: Cannot grow NBD nodes`))
    }
    const wrap = (offset: number, eff: Effect.Effect<void, { readonly message: string }>) =>
      eff.pipe(Effect.mapError((e) => fail(`error while writing at byte ${offset}: ${e.message}`)))
    const sink: Sink = {
      zeroIsFree: o.targetIsZero,
      alignment: 1,
      zeroGranularity: 1,
      writeData: (offset, data) => wrap(offset, target.write(offset, data)),
      writeZeroes: (offset, length) => wrap(offset, target.writeZeroes(offset, length, { unmap: o.sparseSize !== 0 })),
      // QEMU's nbd driver sends NBD_CMD_FLUSH from its flush_to_os stage, which cache=unsafe does not skip.
      finish: o.cache === "unsafe" && parseNbdName(o.target) === undefined ? Effect.void : Effect.mapError(target.flush(), (e) => flushFailure(strerror(e)))
    }
    return sink
  })

/**
 * Closes a qcow2 target as QEMU does (caches written back, each followed by
 * a flush unless the cache mode is unsafe); a cache that could not be
 * written back is reported in QEMU's words, one line each, and fails.
 */
const finishImage = (target: Image): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    const failures = target.close !== undefined ? yield* target.close() : []
    const lines = failures.map((f) => `Failed to flush the ${f.cache} cache: ${strerror(f.error)}`)
    for (const line of lines.slice(0, -1)) reportLine(line)
    if (lines.length > 0) return yield* Effect.fail(fail(lines[lines.length - 1]!))
  })

/**
 * Writes in guest order (qemu-img convert without -W): a task writes when
 * every task before it has finished; a task with nothing to write only
 * marks itself done. Reads are not ordered.
 */
export class WriteOrder {
  private next = 0
  private readonly finishedEarly = new Set<number>()
  private readonly waiting = new Map<number, () => void>()

  /** Waits until task `seq` is the next one to write. */
  turn(seq: number): Effect.Effect<void> {
    if (seq === this.next) return Effect.void
    return Effect.callback<void>((resume) => {
      this.waiting.set(seq, () => resume(Effect.void))
      return Effect.sync(() => this.waiting.delete(seq))
    })
  }

  /** Task `seq` has written, or placed its writes (or had nothing to write): the next ones may go. */
  done(seq: number): void {
    if (seq !== this.next) {
      this.finishedEarly.add(seq)
      return
    }
    this.next++
    while (this.finishedEarly.delete(this.next)) this.next++
    const wake = this.waiting.get(this.next)
    if (wake !== undefined) {
      this.waiting.delete(this.next)
      wake()
    }
  }
}

/** A qcow2 target: created with the -o options, written through the driver. */
export const qcow2Sink = (o: ConvertOptions, total: number) =>
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
    // Compression runs on libuv's thread pool; many clusters are in flight at
    // once and each result lands in its own cluster. Where zstd runs on wasm
    // worker threads instead (no libzstd), this thread reads, writes and
    // allocates for the whole copy (more CPU than zstd takes), so zstd leaves
    // it a core: 2 cores, 1 GiB, one zstd worker kept up, and a second one
    // cost ~10 MiB of peak memory.
    const zstdWorkers = Math.max(1, availableParallelism() - 1)
    const pool = o.compress ? yield* Effect.flatMap(Effect.promise(() => import("@qcow2/compress/node")), (m) => m.makeCompressionPool({ zstdWorkers })) : undefined
    const target = yield* open(o.target, {
      readOnly: false,
      format: "qcow2",
      passphrase,
      ...(pool !== undefined
        ? { compress: (type: 0 | 1, cluster: Uint8Array, level: number | undefined) => pool.compress(type, cluster, level), compressClusters: pool.compressClusters }
        : {})
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
      writeData: (offset, data, placed) =>
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
          : wrap(offset, target.write(offset, data, { placed })),
      writeZeroes: (offset, length) => wrap(offset, target.writeZeroes(offset, length, { unmap: o.sparseSize !== 0 })),
      ...(o.backingFile !== undefined ? { backingSize: !o.skipCreate && target.backing !== undefined ? target.backing.virtualSize : -1 } : {}),
      finish: finishImage(target)
    }
    return sink
  })
