import { Effect, Semaphore } from "effect"
import { CompatibleFeature, IncompatibleFeature, l1EntriesFor, snapshotTableSize } from "@qcow2/format"
import type { SnapshotEntry } from "@qcow2/format"
import {
  ClusterError,
  discardClusters,
  growL1,
  lookup,
  preallocateClusters,
  readGuest,
  writeGuest,
  zeroClusters,
  zeroSubclusters
} from "@qcow2/cluster"
import type { ClusterContext, ClusterFailure } from "@qcow2/cluster"
import type { ClusterCodecShape } from "@qcow2/compress"
import type { Refcounts } from "@qcow2/alloc"
import type { BlockStatus, CheckResult, Image, TruncateOptions } from "../api.js"
import { ImageError } from "../errors.js"
import { asImageError, checkRange } from "../internal/errors.js"
import { isZero } from "../raw.js"
import type { HeaderState } from "./header.js"
import { writeCompressedCluster } from "./compressed.js"

/** Create-time operations on an open qcow2 image that are not part of the public Image API. */
export interface Qcow2Internals {
  /**
   * Allocates clusters for a LUKS area, writes it, and records it in the
   * header (crypt_method 2 + full disk encryption extension), or records
   * legacy AES (crypt_method 1) when `area` is undefined.
   */
  readonly setUpEncryption: (area: Uint8Array | undefined) => Effect.Effect<void, ImageError>
}

/** Internals of images opened by this driver, for createImage. */
export const qcow2Internals = new WeakMap<Image, Qcow2Internals>()

const isRefcountCorruption = (error: unknown): boolean =>
  typeof error === "object" &&
  error !== null &&
  (error as { _tag?: string })._tag === "RefcountError" &&
  (error as { reason?: string }).reason === "Corrupt"

export interface Qcow2ImageParts {
  readonly context: ClusterContext
  readonly headerState: HeaderState
  readonly readOnly: boolean
  readonly snapshots: SnapshotEntry[]
  readonly backing: Image | undefined
  readonly backingFileName: string | undefined
  readonly backingResolved: string | undefined
  readonly dataFile: string | undefined
  readonly isCorrupt: boolean
  readonly codec: ClusterCodecShape
  readonly encryptedLocked: boolean
  /** Runs a consistency check / repair on the file (flushed first). */
  readonly check: (repair: "leaks" | "all" | undefined) => Effect.Effect<CheckResult, ImageError>
  /** Fresh refcount state and L1 table from the file, after a repair. */
  readonly reload: () => Effect.Effect<{ refcounts: Refcounts; l1: Uint8Array; l1Offset: number; l1Size: number }, ImageError>
}

/**
 * The qcow2 driver object: request-level entry points (one Effect per
 * request, plain loops inside), the corrupt bit, lazy refcounts, flush and
 * close.
 */
export function makeQcow2Image(parts: Qcow2ImageParts): Effect.Effect<Image, ImageError, import("effect").Scope.Scope> {
  const { headerState, readOnly } = parts
  const template = parts.context
  const location = template.location
  const cs = template.geometry.clusterSize
  let corruptFlagged = parts.isCorrupt
  let dirtyMarked = (headerState.header.incompatibleFeatures & IncompatibleFeature.Dirty) !== 0n
  const lazy = (headerState.header.compatibleFeatures & CompatibleFeature.LazyRefcounts) !== 0n

  /** Host ranges of metadata that data and tables must never overwrite (QEMU's "cached" overlap check). */
  const overlapsMetadata = (host: number, length: number, except?: "l2"): string | undefined => {
    const h = headerState.header
    const end = host + length
    const within = (start: number, size: number) => size > 0 && host < start + size && start < end
    if (within(0, cs)) return "qcow2 header"
    if (within(ctx.l1Offset, ctx.l1Size * 8)) return "active L1 table"
    const rt = ctx.refcounts.tableLocation
    if (within(rt.offset, rt.clusters * cs)) return "refcount table"
    if (h.nbSnapshots > 0 && within(h.snapshotsOffset, snapshotTableSize(parts.snapshots))) return "snapshot table"
    for (let c = Math.floor(host / cs) * cs; c < end; c += cs) {
      if (ctx.refcounts.isBlock(c)) return "refcount block"
      if (except !== "l2" && ctx.l2Cache.has(c)) return "active L2 table"
    }
    return undefined
  }

  const markCorrupt = (message: string, offset?: number): Effect.Effect<never, ClusterFailure> =>
    Effect.gen(function* () {
      if (!corruptFlagged && !readOnly) {
        corruptFlagged = true
        yield* Effect.ignore(headerState.setIncompatible(IncompatibleFeature.Corrupt, true))
      }
      corruptFlagged = true
      return yield* new ClusterError({
        reason: "Corrupt",
        message: readOnly
          ? `${message} (the image is damaged; run 'qcow2 check -r all' on it)`
          : `${message}; further writes are refused (the image is marked corrupt; run 'qcow2 check -r all')`,
        ...(offset !== undefined ? { offset } : {})
      })
    })

  const ctx: ClusterContext = {
    ...template,
    corrupt: markCorrupt,
    writable: () => !readOnly && !corruptFlagged,
    overlapsMetadata
  }

  const requireWritable = (): ImageError | undefined => {
    if (readOnly) return new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only`, location })
    if (corruptFlagged) {
      return new ImageError({ reason: "Corrupt", message: `${location} is marked corrupt; writes are refused (run 'qcow2 check -r all')`, location })
    }
    return undefined
  }
  const requireKey = (): ImageError | undefined =>
    parts.encryptedLocked
      ? new ImageError({ reason: "Encryption", message: `${location} is encrypted: a passphrase is needed to read or write its data`, location })
      : undefined

  /** Lazy refcounts: the dirty bit goes to disk before the first metadata change (QEMU's qcow2_mark_dirty). */
  const beforeMetadataChange = (): Effect.Effect<void, ImageError> => {
    if (!lazy || dirtyMarked) return Effect.void
    dirtyMarked = true
    return asImageError(headerState.setIncompatible(IncompatibleFeature.Dirty, true), location)
  }

  /**
   * Runs a request. A refcount inconsistency found on the way (a decrease
   * below zero) is structural damage like any other: it sets the corrupt
   * bit before the error goes back to the caller.
   */
  const run = <A>(effect: Effect.Effect<A, unknown>): Effect.Effect<A, ImageError> =>
    asImageError(
      Effect.tapError(effect, (error) =>
        isRefcountCorruption(error) && !corruptFlagged && !readOnly
          ? Effect.ignore(
              Effect.suspend(() => {
                corruptFlagged = true
                return headerState.setIncompatible(IncompatibleFeature.Corrupt, true)
              })
            )
          : Effect.void
      ),
      location
    )

  const flush = (): Effect.Effect<void, ImageError> =>
    run(
      Effect.gen(function* () {
        yield* ctx.l2Cache.flushTables()
        yield* ctx.refcounts.cache.flushTables()
        yield* ctx.l2Cache.flushTables()
        if (ctx.data !== ctx.storage) yield* ctx.data.flush()
        yield* ctx.storage.flush()
      })
    )

  /** Serialises read-modify-write of partial sectors of encrypted images. */
  const sectorLock = Semaphore.makeUnsafe(1)

  /**
   * Writes guest bytes. Encrypted data is ciphered in whole 512-byte
   * sectors, so a write that does not cover whole sectors reads the
   * sectors it touches, patches them and writes them back.
   */
  const writeBytes = (offset: number, data: Uint8Array): Effect.Effect<void, unknown> => {
    if (ctx.crypto === undefined || (offset % 512 === 0 && data.length % 512 === 0)) return writeGuest(ctx, offset, data)
    return sectorLock.withPermits(1)(
      Effect.gen(function* () {
        const start = Math.floor(offset / 512) * 512
        const end = Math.min(Math.ceil((offset + data.length) / 512) * 512, Math.ceil(ctx.virtualSize / 512) * 512)
        const buffer = new Uint8Array(end - start)
        yield* readGuest(ctx, start, buffer)
        buffer.set(data, offset - start)
        yield* writeGuest(ctx, start, buffer)
      })
    )
  }

  const zeroWrite = (offset: number, length: number) => {
    const chunk = new Uint8Array(Math.min(length, 1 << 20))
    return Effect.gen(function* () {
      for (let done = 0; done < length; done += chunk.length) {
        yield* writeBytes(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)))
      }
    })
  }

  /** True when guest bytes [offset, offset+length) read as zeros without looking at data. */
  const readsAsZero = (offset: number, length: number): Effect.Effect<boolean, ImageError> =>
    Effect.gen(function* () {
      let done = 0
      while (done < length) {
        const status = yield* blockStatus(offset + done, length - done)
        if (!status.zero) return false
        done += status.length
      }
      return true
    })

  /** Zeroes one partial unit (subcluster or cluster): QEMU widens it to the whole unit when the rest already reads as zeros. */
  const zeroPartialUnit = (unitStart: number, unitEnd: number, offset: number, end: number, unmap: boolean) =>
    Effect.gen(function* () {
      const kind = (yield* lookup(ctx, unitStart, 1)).kind
      const widen =
        (kind === "unallocated" || kind === "zero") &&
        (yield* readsAsZero(unitStart, offset - unitStart)) &&
        (yield* readsAsZero(end, unitEnd - end))
      if (!widen) return yield* zeroWrite(offset, end - offset)
      yield* zeroAligned(unitStart, unitEnd - unitStart, unmap)
    })

  /**
   * Zeroes an aligned range: whole clusters by flag, partial clusters by
   * subcluster bits; on v2 (no zero flag, no backing file) by dropping the
   * clusters, as QEMU does.
   */
  const zeroAligned = (offset: number, length: number, unmap: boolean): Effect.Effect<void, unknown> =>
    Effect.gen(function* () {
      if (ctx.version < 3) return yield* discardClusters(ctx, offset, length)
      const end = offset + length
      let position = offset
      while (position < end) {
        const clusterStart = Math.floor(position / cs) * cs
        const clusterEnd = clusterStart + cs
        if (position === clusterStart) {
          let wholeEnd = Math.floor(end / cs) * cs
          if (end === ctx.virtualSize && end > wholeEnd) wholeEnd = end
          if (wholeEnd > position) {
            yield* zeroClusters(ctx, position, wholeEnd - position, unmap)
            position = wholeEnd
            continue
          }
        }
        const stop = Math.min(end, clusterEnd)
        const done = yield* zeroSubclusters(ctx, position, stop - position)
        if (!done) yield* zeroWrite(position, stop - position)
        position = stop
      }
    })

  /**
   * Write-zeroes as QEMU does it (qcow2_co_pwrite_zeroes and the block
   * layer around it): whole (sub)clusters get the zero flag (v3) or are
   * dropped (v2 without a backing file, where unallocated reads as zeros);
   * a partial unit at either end is widened to the whole unit when the rest
   * of it already reads as zeros and it holds no data, and otherwise gets
   * zero bytes written. Encrypted images and v2 images over a backing file
   * get zero bytes written throughout.
   */
  const writeZeroes = (offset: number, length: number, options?: { readonly unmap?: boolean }) => {
    const bad = requireWritable() ?? requireKey() ?? checkRange(location, ctx.virtualSize, offset, length)
    if (bad) return Effect.fail(bad)
    if (length === 0) return Effect.void
    const unmap = options?.unmap ?? false
    return Effect.andThen(
      beforeMetadataChange(),
      run(
        Effect.gen(function* () {
          const end = offset + length
          if (ctx.crypto !== undefined || (ctx.version < 3 && ctx.backing !== undefined)) return yield* zeroWrite(offset, length)
          const unit = ctx.geometry.subclusterSize
          const size = ctx.virtualSize
          const unitEndOf = (start: number) => Math.min(start + unit, size)
          const firstUnit = Math.floor(offset / unit) * unit
          const lastUnit = Math.floor((end - 1) / unit) * unit
          if (firstUnit === lastUnit) {
            if (offset === firstUnit && end === unitEndOf(firstUnit)) return yield* zeroAligned(offset, length, unmap)
            return yield* zeroPartialUnit(firstUnit, unitEndOf(firstUnit), offset, end, unmap)
          }
          let middleStart = offset
          if (offset !== firstUnit) {
            yield* zeroPartialUnit(firstUnit, firstUnit + unit, offset, firstUnit + unit, unmap)
            middleStart = firstUnit + unit
          }
          const tailPartial = end !== unitEndOf(lastUnit)
          const middleEnd = tailPartial ? lastUnit : end
          if (middleEnd > middleStart) yield* zeroAligned(middleStart, middleEnd - middleStart, unmap)
          if (tailPartial) yield* zeroPartialUnit(lastUnit, unitEndOf(lastUnit), lastUnit, end, unmap)
        })
      )
    )
  }

  const discard = (offset: number, length: number) => {
    const bad = requireWritable() ?? checkRange(location, ctx.virtualSize, offset, length)
    if (bad) return Effect.fail(bad)
    // v2 has no zero flag: dropping clusters would expose the backing file,
    // so QEMU refuses the discard (and ignores the refusal).
    if (ctx.version < 3 && ctx.backing !== undefined) return Effect.void
    // Only whole clusters are discarded (and a partial last cluster at the image end), as QEMU does.
    const first = Math.ceil(offset / cs) * cs
    const end = offset + length
    const last = end === ctx.virtualSize ? end : Math.floor(end / cs) * cs
    if (first >= last) return Effect.void
    return Effect.andThen(beforeMetadataChange(), run(discardClusters(ctx, first, last - first)))
  }

  let preallocationDetected: boolean | undefined

  /**
   * QEMU's heuristic for images made with preallocation=metadata: more
   * clusters have a refcount than the file really occupies (by at least a
   * ninth, and two clusters). Data clusters of such images are then reported
   * as zero where the file has holes.
   */
  const metadataPreallocated = (): Effect.Effect<boolean, unknown> => {
    if (preallocationDetected !== undefined) return Effect.succeed(preallocationDetected)
    const allocated = ctx.storage.allocatedSize
    if (allocated === undefined) {
      preallocationDetected = false
      return Effect.succeed(false)
    }
    return Effect.gen(function* () {
      const fileLength = yield* ctx.storage.size()
      const realClusters = Math.floor((yield* allocated()) / cs)
      const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2)
      const endCluster = Math.ceil(fileLength / cs)
      let count = 0
      for (let i = 0; i < endCluster && count < threshold; i++) if ((yield* ctx.refcounts.get(i)) > 0) count++
      preallocationDetected = count >= threshold
      return preallocationDetected
    })
  }

  /**
   * Whether host bytes at `hostOffset` read as a hole, and how far that
   * stays true. Node has no SEEK_HOLE, so all-zero 4 KiB blocks stand in for
   * holes; bytes past the end of the file are a hole.
   */
  const holeStatus = (hostOffset: number, length: number): Effect.Effect<{ zero: boolean; length: number }, unknown> =>
    Effect.gen(function* () {
      const fileLength = yield* ctx.storage.size()
      if (hostOffset >= fileLength) return { zero: true, length }
      const window = new Uint8Array(Math.min(length, 2 * 1024 * 1024, fileLength - hostOffset))
      yield* ctx.storage.read(hostOffset, window)
      let done = 0
      let zero: boolean | undefined
      while (done < window.length) {
        const n = Math.min(4096 - ((hostOffset + done) % 4096), window.length - done)
        const z = isZero(window.subarray(done, done + n))
        if (zero === undefined) zero = z
        else if (z !== zero) break
        done += n
      }
      return { zero: zero ?? true, length: Math.max(1, done) }
    })

  const blockStatus = (offset: number, length: number): Effect.Effect<BlockStatus, ImageError> => {
    const bad = checkRange(location, ctx.virtualSize, offset, length)
    if (bad) return Effect.fail(bad)
    return run(
      Effect.gen(function* () {
        const mapping = yield* lookup(ctx, offset, Math.max(1, length))
        const hideOffset = ctx.crypto !== undefined || parts.encryptedLocked
        const file = ctx.data.location
        switch (mapping.kind) {
          case "data": {
            let length = mapping.length
            let zero = false
            if (!hideOffset && !ctx.externalData && (yield* metadataPreallocated())) {
              // QEMU asks the file whether preallocated clusters hold data (BDRV_BLOCK_RECURSE).
              const hole = yield* holeStatus(mapping.hostOffset, length)
              length = hole.length
              zero = hole.zero
            }
            return {
              offset, length, depth: 0, present: true, zero, data: true, compressed: false,
              ...(hideOffset ? {} : { hostOffset: mapping.hostOffset, file })
            }
          }
          case "compressed":
            return { offset, length: mapping.length, depth: 0, present: true, zero: false, data: true, compressed: true }
          case "zero":
            return {
              offset, length: mapping.length, depth: 0, present: true, zero: true, data: false, compressed: false,
              ...(mapping.hostOffset !== undefined && !hideOffset ? { hostOffset: mapping.hostOffset, file } : {})
            }
          case "unallocated": {
            const backing = parts.backing
            if (backing === undefined || offset >= backing.virtualSize) {
              // Nothing below (or past the end of a shorter backing file): zeros,
              // reported at this layer. An extended-L2 cluster keeps its host
              // offset even for subclusters not allocated yet, and QEMU shows it.
              return {
                offset, length: mapping.length, depth: 0, present: false, zero: true, data: false, compressed: false,
                ...(mapping.hostOffset !== undefined && !hideOffset && backing === undefined ? { hostOffset: mapping.hostOffset, file } : {})
              }
            }
            const below = yield* backing.blockStatus(offset, Math.min(mapping.length, backing.virtualSize - offset))
            return { ...below, depth: below.depth + 1 }
          }
        }
      })
    )
  }

  const truncate = (size: number, options?: TruncateOptions) => {
    const bad = requireWritable()
    if (bad) return Effect.fail(bad)
    if (!Number.isSafeInteger(size) || size < 0) return Effect.fail(new ImageError({ reason: "InvalidArgument", message: `invalid size ${size}`, location }))
    if (size < ctx.virtualSize && !options?.shrink) {
      return Effect.fail(new ImageError({ reason: "InvalidArgument", message: "Use the --shrink option to perform a shrink operation.", location }))
    }
    if (size % 512 !== 0) {
      return Effect.fail(new ImageError({ reason: "InvalidArgument", message: "The new size must be a multiple of 512", location }))
    }
    return Effect.andThen(
      beforeMetadataChange(),
      run(
        ctx.lock.withPermits(1)(
          Effect.gen(function* () {
            if (size < ctx.virtualSize) {
              const from = Math.ceil(size / cs) * cs
              ctx.virtualSize = Math.max(size, ctx.virtualSize)
              yield* ctx.lock.release(1)
              yield* Effect.ensuring(discardTail(from), ctx.lock.take(1))
            } else {
              yield* growL1(ctx, l1EntriesFor(size, ctx.geometry))
            }
            yield* headerState.update({ size })
            const oldSize = ctx.virtualSize
            ctx.virtualSize = size
            const mode = options?.preallocation ?? "off"
            if (mode !== "off" && size > oldSize) {
              yield* ctx.lock.release(1)
              yield* Effect.ensuring(preallocate(oldSize, size, mode), ctx.lock.take(1))
            }
          })
        )
      )
    )
  }

  /** Gives [from, to) host clusters and grows the file over them (zero-filled for "full"). */
  const preallocate = (from: number, to: number, mode: "metadata" | "falloc" | "full"): Effect.Effect<void, unknown> =>
    Effect.gen(function* () {
      const hostEnd = yield* preallocateClusters(ctx, from, to - from)
      yield* flush()
      const target = ctx.externalData ? ctx.data : ctx.storage
      const end = ctx.externalData ? Math.ceil(to / cs) * cs : hostEnd
      const current = yield* target.size()
      if (end <= current) return
      if (mode === "full") {
        const zeros = new Uint8Array(Math.min(1 << 20, end - current))
        for (let p = current; p < end; p += zeros.length) yield* target.write(p, zeros.subarray(0, Math.min(zeros.length, end - p)))
      } else {
        yield* target.resize(end)
      }
    })

  /** Drops every cluster from guest offset `from` on (shrink). */
  const discardTail = (from: number): Effect.Effect<void, unknown> =>
    Effect.gen(function* () {
      if (from >= ctx.virtualSize) return
      const coverage = cs * ctx.geometry.l2Entries
      const end = Math.ceil(ctx.virtualSize / cs) * cs
      for (let position = from; position < end; ) {
        const next = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
        const mapping = yield* lookup(ctx, position, next - position)
        if (!(mapping.kind === "unallocated" && mapping.hostOffset === undefined)) {
          const saved = ctx.virtualSize
          ctx.virtualSize = end
          yield* discardClusters(ctx, position, next - position)
          ctx.virtualSize = saved
        }
        position = next
      }
    })

  const image: Image = {
    format: "qcow2",
    location,
    readOnly,
    get virtualSize() {
      return ctx.virtualSize
    },
    clusterSize: cs,
    get header() {
      return headerState.image
    },
    snapshots: parts.snapshots,
    backing: parts.backing,
    backingFileName: parts.backingFileName,
    backingFileResolved: parts.backingResolved,
    dataFile: parts.dataFile,
    read: (offset, into) => {
      const bad = checkRange(location, ctx.virtualSize, offset, into.length) ?? requireKey()
      return bad ? Effect.fail(bad) : run(readGuest(ctx, offset, into))
    },
    write: (offset, data) => {
      const bad = requireWritable() ?? requireKey() ?? checkRange(location, ctx.virtualSize, offset, data.length)
      if (bad) return Effect.fail(bad)
      if (data.length === 0) return Effect.void
      return Effect.andThen(beforeMetadataChange(), run(writeBytes(offset, data)))
    },
    writeZeroes,
    discard,
    writeCompressed: (offset, data) => {
      const bad = requireWritable() ?? requireKey() ?? checkRange(location, ctx.virtualSize, offset, data.length)
      if (bad) return Effect.fail(bad)
      if (ctx.crypto !== undefined || parts.encryptedLocked) {
        return Effect.fail(new ImageError({ reason: "Unsupported", message: "Compression is not supported with encryption", location }))
      }
      return Effect.andThen(beforeMetadataChange(), run(writeCompressedCluster(ctx, offset, data)))
    },
    flush,
    truncate,
    blockStatus,
    check: (options) => {
      const repair = options?.repair
      if (repair !== undefined && readOnly) {
        return Effect.fail(new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only; repairs need a read-write open`, location }))
      }
      if (repair === undefined) return Effect.andThen(flush(), parts.check(undefined))
      // Repairs rewrite metadata behind the driver's back: hold the lock,
      // write everything out, then start from what is on disk.
      return ctx.lock.withPermits(1)(
        Effect.gen(function* () {
          yield* flush()
          const result = yield* parts.check(repair)
          ctx.l2Cache.dropClean()
          const fresh = yield* parts.reload()
          ctx.refcounts = fresh.refcounts
          ctx.l1 = fresh.l1
          ctx.l1Offset = fresh.l1Offset
          ctx.l1Size = fresh.l1Size
          if (result.corruptions === 0 && result.checkErrors === 0) {
            // Consistent again (QEMU's qcow2_mark_clean + qcow2_mark_consistent after a repair).
            yield* asImageError(headerState.setIncompatible(IncompatibleFeature.Dirty | IncompatibleFeature.Corrupt, false), location)
            corruptFlagged = false
            dirtyMarked = false
          }
          return result
        })
      )
    }
  }

  qcow2Internals.set(image, {
    setUpEncryption: (area) =>
      run(
        ctx.lock.withPermits(1)(
          Effect.gen(function* () {
            const current = headerState.image
            if (area === undefined) {
              yield* headerState.update({ cryptMethod: 1 })
              return
            }
            const clusters = Math.ceil(area.length / cs)
            const offset = yield* ctx.refcounts.allocate(clusters)
            const padded = new Uint8Array(clusters * cs)
            padded.set(area)
            yield* ctx.refcounts.flushBlocks()
            yield* ctx.storage.write(offset, padded)
            yield* headerState.rewriteAll({
              ...current,
              header: { ...current.header, cryptMethod: 2 },
              extensions: { ...current.extensions, fullDiskEncryption: { offset, length: area.length } }
            })
          })
        )
      )
  })

  return Effect.as(
    Effect.addFinalizer(() =>
      Effect.ignore(
        Effect.gen(function* () {
          if (readOnly) return
          yield* flush()
          // A clean close of a lazy-refcount image: everything is consistent again.
          if (lazy && dirtyMarked && !corruptFlagged) {
            yield* run(headerState.setIncompatible(IncompatibleFeature.Dirty, false))
          }
        })
      )
    ),
    image
  )
}
