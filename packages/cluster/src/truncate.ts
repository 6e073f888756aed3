import { Effect } from "effect"
import { IncompatibleFeature, l1EntriesFor, Limits, AutoclearFeature } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError, ImageError, errnoOfFailure, isStructuralDamage, strerrorOfFailure, toImageError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { dropClusters } from "./discard.js"
import { l2Coverage, lookup } from "./mapping.js"
import { growFile, preallocateClusters } from "./preallocate.js"
import { readGuest } from "./read.js"
import { writeBytes } from "./write.js"
import { writeZeroes, zeroToEnd } from "./zero.js"
import { freeClusters } from "./free.js"

/** How `qemu-img resize --preallocation` fills a grown area. */
export type Preallocation = "off" | "metadata" | "falloc" | "full"

const refuse = (reason: "InvalidArgument" | "Unsupported", message: string) => new ClusterError({ reason, message })

/**
 * Changes the virtual size as QEMU's qcow2_co_truncate does (arguments
 * checked by the caller).
 *
 * Shrinking drops every cluster past the new end completely (full
 * discard), empties the L1 entries past it and frees their L2 tables, and
 * cuts the file after the last cluster still in use. Growing makes room in
 * the L1 table, records the size, preallocates as asked (data-file-raw
 * images always get their metadata), and, when a backing file would show
 * through the new area, makes that area read as zeros (QEMU's
 * BDRV_REQ_ZERO_WRITE, which v2 images do not support).
 */
export function truncateImage(engine: Qcow2Engine, size: number, preallocation: Preallocation): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const oldSize = engine.header.size
    const h = engine.header.header
    if (h.nbSnapshots > 0 && h.version < 3) return yield* refuse("Unsupported", "Can't resize a v2 image which has snapshots")
    if (size < oldSize) {
      if (preallocation !== "off") return yield* refuse("InvalidArgument", "Preallocation can't be used for shrinking an image")
      yield* shrink(engine, size, oldSize)
      return yield* engine.lock.withPermits(1)(engine.header.update({ size }))
    }
    if (l1EntriesFor(size, engine.geometry) * 8 > Limits.maxL1Bytes) return yield* refuse("InvalidArgument", "Failed to grow the L1 table: File too large")
    yield* engine.lock.withPermits(1)(engine.l1.grow(l1EntriesFor(size, engine.geometry), engine.refcounts))
    const backingShows = engine.backing !== undefined && engine.backing.size > oldSize && size > oldSize
    if (backingShows && engine.version < 3) return yield* refuse("Unsupported", "Failed to zero out new clusters: Operation not supported")
    yield* engine.lock.withPermits(1)(engine.header.update({ size }))
    const rawData = (h.autoclearFeatures & AutoclearFeature.RawExternalData) !== 0n && (h.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) !== 0n
    const mode = rawData && preallocation === "off" ? "metadata" : preallocation
    // falloc/full over a backing file that would show: the grown file's zeros
    // are the new content, as allocated data (QEMU lets the file driver zero
    // the area and skips the zero flags); with an external data file QEMU
    // preallocates metadata only and zeroes as for metadata.
    const zeroFilled = backingShows && !engine.externalData && (mode === "falloc" || mode === "full")
    if (mode !== "off" && size > oldSize) yield* preallocate(engine, oldSize, size, mode, zeroFilled)
    if (backingShows && !zeroFilled) yield* zeroNewArea(engine, oldSize, size)
  })
}

/**
 * Gives [from, to) host clusters and grows the file over them (zero-filled
 * for falloc and full, so that the file is not sparse); `zeroFilled`: see
 * truncateImage. The cluster the old end cuts in two:
 * - without extended L2 it is written first, as QEMU's allocation with a
 *   COW head does: when unallocated it gets a cluster holding what the old
 *   part read (backing data included); for falloc and full its new part is
 *   written out even when allocated, so later writes there do not grow the
 *   file;
 * - with extended L2 it gets a host cluster like the others, its bitmap
 *   kept (QEMU's preallocation leaves bitmaps alone), except when
 *   `zeroFilled`: then it is rewritten whole from its start, old part plus
 *   zeros, all of its subclusters allocated (when the new end is inside it,
 *   up to there only: the subclusters past the end keep their bits).
 * Other clusters: see preallocateClusters.
 */
function preallocate(engine: Qcow2Engine, from: number, to: number, mode: Exclude<Preallocation, "off">, zeroFilled: boolean): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const headStart = Math.floor(from / cs) * cs
    const headEnd = Math.min(to, headStart + cs)
    if (from > headStart && !engine.externalData) {
      if (!engine.geometry.extendedL2) {
        const head = yield* lookup(engine, from, headEnd - from)
        if (mode !== "metadata" || head.kind === "unallocated") yield* writeBytes(engine, from, new Uint8Array(headEnd - from))
      } else if (zeroFilled) {
        const cluster = new Uint8Array(headEnd - headStart)
        yield* readGuest(engine, headStart, cluster.subarray(0, from - headStart))
        yield* writeBytes(engine, headStart, cluster)
      }
    }
    const fill = mode === "metadata" ? "sparse" : "zeros"
    const hostEnd = yield* preallocateClusters(engine, from, to - from, fill, zeroFilled ? "zeros" : "kept")
    yield* growFile(engine.data, engine.externalData ? Math.ceil(to / cs) * cs : hostEnd, fill)
    yield* engine.flushMetadata()
  })
}

/**
 * The grown area reads as zeros, not as the backing file (QEMU's
 * BDRV_REQ_ZERO_WRITE in qcow2_co_truncate): zero bits or flags from the
 * first subcluster boundary to the new end in one zeroize, which, running
 * to the end of the image, zeroes the last cluster whole; zero bytes
 * written before that boundary. Where the L2 tables cannot say it (a
 * compressed cluster cut in two), zero bytes throughout.
 */
function zeroNewArea(engine: Qcow2Engine, from: number, to: number): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const unit = engine.geometry.subclusterSize
    const alignedStart = Math.ceil(from / unit) * unit
    if (to > alignedStart && !(yield* zeroToEnd(engine, alignedStart))) yield* writeZeroes(engine, alignedStart, to - alignedStart, false)
    const headEnd = Math.min(alignedStart, to)
    if (headEnd > from) yield* writeBytes(engine, from, new Uint8Array(headEnd - from))
  })
}

/** Drops everything past `size`, the L2 tables no longer needed, and the unused tail of the file. */
function shrink(engine: Qcow2Engine, size: number, oldSize: number): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    yield* dropTail(engine, Math.ceil(size / cs) * cs, oldSize)
    yield* engine.flushMetadata()
    yield* engine.lock.withPermits(1)(
      Effect.gen(function* () {
        const keep = l1EntriesFor(size, engine.geometry)
        const freed: number[] = []
        for (let index = keep; index < engine.l1.size; index++) {
          const l2Offset = yield* engine.l1.unlink(index)
          if (l2Offset !== 0) freed.push(l2Offset)
        }
        // Rule 3: the emptied L1 entries are durable before the tables' refcounts drop.
        yield* engine.storage.flush()
        for (const l2Offset of freed) {
          engine.l2Cache.invalidate(l2Offset)
          yield* freeClusters(engine, l2Offset, cs)
        }
        yield* Effect.catch(engine.refcounts.dropUnusedBlocks(), (failure) => shrinkFailure(engine, "Failed to discard unused refblocks", failure))
        yield* engine.refcounts.cache.flush()
        const usedClusters = yield* engine.refcounts.usedEnd()
        if (usedClusters * cs < (yield* engine.storage.size())) yield* engine.storage.resize(usedClusters * cs)
        // What the shrink freed goes back to the file system, as QEMU's discard of freed clusters does.
        if (engine.storage.capabilities.discard) {
          for (const range of yield* engine.refcounts.freeRanges(usedClusters)) yield* engine.storage.discard(range.offset, range.length)
        }
      })
    )
    yield* engine.flushMetadata()
  })
}

/**
 * A failed step of a shrink as QEMU's qcow2_co_truncate words it ("Failed
 * to discard unused refblocks: <strerror>"); structural damage met on the
 * way has marked the image corrupt first (rule 5).
 */
function shrinkFailure(engine: Qcow2Engine, step: string, failure: EngineFailure): Effect.Effect<never, EngineFailure> {
  const failed = new ImageError({
    reason: toImageError(failure, engine.location).reason,
    message: `${step}: ${strerrorOfFailure(failure)}`,
    location: engine.location,
    errno: errnoOfFailure(failure),
    cause: failure
  })
  return isStructuralDamage(failure) ? Effect.andThen(Effect.ignore(engine.integrity.markCorrupt(failure.message, failure.offset)), Effect.fail(failed)) : Effect.fail(failed)
}

/** Drops every cluster in guest range [from, end) (a shrink), one L2 table at a time. */
function dropTail(engine: Qcow2Engine, from: number, oldSize: number): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const coverage = l2Coverage(engine)
    const end = Math.ceil(oldSize / cs) * cs
    for (let position = from; position < end; ) {
      const next = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
      const mapping = yield* lookup(engine, position, next - position)
      if (!(mapping.kind === "unallocated" && mapping.hostOffset === undefined && mapping.length === next - position)) {
        yield* dropClusters(engine, position, next - position)
      }
      position = next
    }
  })
}
