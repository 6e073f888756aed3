import { Effect } from "effect"
import { readL2EntryForIo } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { TableCacheError } from "@qcow2/cache"
import type { DecompressionError } from "@qcow2/compress"
import { debugPoint, type StorageError } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError } from "./errors.js"
import { hasZeroFlag, preV3ZeroMessage, readDamageMessage, slotText } from "./l2-damage.js"

/**
 * Where a run of guest bytes lives (spec "Cluster mapping"):
 * - `data`: `length` bytes at `hostOffset` in the data file, contiguous.
 * - `zero`: reads as zeros (zero flag or zero subclusters); `hostOffset`
 *   set when a preallocated cluster stays behind it.
 * - `unallocated`: this layer has nothing; read the backing file (or zeros).
 *   `hostOffset` set for an extended-L2 cluster whose subclusters are not
 *   allocated yet.
 * - `compressed`: inside one compressed cluster; `clusterOffset` is the guest
 *   offset of that cluster, `offsetInCluster` where the run starts in it.
 */
export type MappingRun =
  | { readonly kind: "data"; readonly length: number; readonly hostOffset: number }
  | { readonly kind: "zero"; readonly length: number; readonly hostOffset: number | undefined }
  | { readonly kind: "unallocated"; readonly length: number; readonly hostOffset: number | undefined }
  | {
      readonly kind: "compressed"
      readonly length: number
      readonly hostOffset: number
      readonly compressedSize: number
      readonly offsetInCluster: number
    }

/** Guest clusters mapped by one L2 table. */
export const l2Coverage = (engine: Qcow2Engine): number => engine.geometry.clusterSize * engine.geometry.l2Entries

/**
 * The L2 table offset for guest `offset`, or 0 when its L1 entry is empty.
 * An L1 entry past 2^53, unaligned or overlapping other metadata is corruption.
 */
export function l2TableOffset(engine: Qcow2Engine, offset: number): Effect.Effect<number, ClusterError> {
  return engine.l1.l2Offset(Math.floor(offset / l2Coverage(engine)))
}

/** Loads (or finds cached) the L2 table at `l2Offset`. */
export function loadL2(engine: Qcow2Engine, l2Offset: number): Effect.Effect<Uint8Array, TableCacheError> {
  const cached = engine.l2Cache.lookup(l2Offset)
  return cached !== undefined ? Effect.succeed(cached) : engine.l2Cache.get(l2Offset)
}

/**
 * The mapping of guest bytes [offset, offset + maxLength), as one run of the
 * same kind (merging adjacent clusters where the host side is contiguous
 * too). Never crosses an L2 table; callers loop.
 */
export function lookup(engine: Qcow2Engine, offset: number, maxLength: number): Effect.Effect<MappingRun, ClusterError | TableCacheError> {
  const limit = tableLimit(engine, offset, maxLength)
  return Effect.flatMap(l2TableOffset(engine, offset), (l2Offset) => {
    if (l2Offset === 0) return Effect.succeed<MappingRun>({ kind: "unallocated", length: limit, hostOffset: undefined })
    const cached = engine.l2Cache.lookup(l2Offset)
    if (cached !== undefined) return scanned(engine, cached, l2Offset, offset, limit)
    return Effect.flatMap(engine.l2Cache.get(l2Offset), (table) => scanned(engine, table, l2Offset, offset, limit))
  })
}

/**
 * `lookup` without an Effect when everything it reads is in memory (a
 * usable L1 entry, a cached L2 table) and the entry is sound; undefined
 * otherwise, and `lookup` then loads or reports. A sequential reader of
 * compressed clusters looks up every cluster.
 */
export function lookupNow(engine: Qcow2Engine, offset: number, maxLength: number): MappingRun | undefined {
  const limit = tableLimit(engine, offset, maxLength)
  const l2Offset = engine.l1.plainL2Offset(Math.floor(offset / l2Coverage(engine)), false)
  if (l2Offset === undefined) return undefined
  if (l2Offset === 0) return { kind: "unallocated", length: limit, hostOffset: undefined }
  const table = engine.l2Cache.lookup(l2Offset)
  if (table === undefined) return undefined
  const run = scanTable(engine, table, l2Offset, offset, limit)
  return typeof run === "string" ? undefined : run
}

/** `maxLength` cut at the end of the L2 table that maps `offset`. */
const tableLimit = (engine: Qcow2Engine, offset: number, maxLength: number): number => {
  const coverage = l2Coverage(engine)
  return Math.min(maxLength, Math.floor(offset / coverage) * coverage + coverage - offset)
}

/** The run `scanTable` finds, or the image marked corrupt with its message. */
const scanned = (engine: Qcow2Engine, table: Uint8Array, l2Offset: number, offset: number, limit: number): Effect.Effect<MappingRun, ClusterError> => {
  const run = scanTable(engine, table, l2Offset, offset, limit)
  return typeof run === "string" ? engine.integrity.markCorrupt(run, offset) : Effect.succeed(run)
}

/** Per-unit status while scanning: a subcluster (extended L2) or a cluster. */
interface Unit {
  kind: MappingRun["kind"]
  hostOffset: number | undefined
  compressedSize: number
}

/** The run from `offset` in the L2 table `table`, or QEMU's corruption message for its first entry. */
function scanTable(engine: Qcow2Engine, table: Uint8Array, l2Offset: number, offset: number, limit: number): MappingRun | string {
  const g = engine.geometry
  const unitSize = g.subclusterSize
  const unitsPerCluster = g.subclustersPerCluster
  const clusterIndex = Math.floor(offset / g.clusterSize)
  let l2Index = clusterIndex % g.l2Entries
  let unit = Math.floor((offset % g.clusterSize) / unitSize)
  const offsetInUnit = offset % unitSize
  let entry = readL2EntryForIo(table, l2Index, g)
  const first: Unit = { kind: "unallocated", hostOffset: undefined, compressedSize: 0 }
  const bad = classify(engine, entry, unit, first, l2Offset, l2Index)
  if (bad !== undefined) return bad
  if (first.kind === "compressed") {
    const offsetInCluster = offset % g.clusterSize
    return {
      kind: "compressed",
      length: Math.min(limit, g.clusterSize - offsetInCluster),
      hostOffset: first.hostOffset!,
      compressedSize: first.compressedSize,
      offsetInCluster
    }
  }
  let length = unitSize - offsetInUnit
  const next: Unit = { kind: "unallocated", hostOffset: undefined, compressedSize: 0 }
  let expectedHost = first.hostOffset === undefined ? undefined : first.hostOffset + unitSize
  while (length < limit) {
    unit++
    if (unit === unitsPerCluster) {
      unit = 0
      l2Index++
      if (l2Index === g.l2Entries) break
      entry = readL2EntryForIo(table, l2Index, g)
      // QEMU's count_contiguous_subclusters fails the whole run on a
      // subcluster bitmap no image may hold, wherever the run meets it.
      if (entry._tag === "Invalid" && entry.damage === "SubclusterBitmap") return readDamageMessage(entry, { l2Offset, index: l2Index })
    }
    if (classify(engine, entry, unit, next, l2Offset, l2Index) !== undefined) break
    if (next.kind !== first.kind) break
    // Runs with host clusters (data, and zero or unallocated with a preallocated
    // cluster) need contiguous host offsets, as QEMU's count_contiguous_subclusters.
    if (expectedHost !== undefined ? next.hostOffset !== expectedHost : next.hostOffset !== undefined) break
    if (expectedHost !== undefined) expectedHost += unitSize
    length += unitSize
  }
  length = Math.min(length, limit)
  if (first.kind === "data") return { kind: "data", length, hostOffset: first.hostOffset! + offsetInUnit }
  if (first.kind === "zero") return { kind: "zero", length, hostOffset: first.hostOffset }
  return { kind: "unallocated", length, hostOffset: first.hostOffset }
}

/**
 * Fills `out` with the status of subcluster `unit` of `entry` (QEMU's
 * qcow2_get_subcluster_type); returns QEMU's corruption message when the
 * entry, at `index` in the table at `l2Offset`, cannot be read.
 */
function classify(engine: Qcow2Engine, entry: L2Entry, unit: number, out: Unit, l2Offset: number, index: number): string | undefined {
  out.compressedSize = 0
  switch (entry._tag) {
    case "Unallocated":
      out.kind = "unallocated"
      out.hostOffset = undefined
      return undefined
    case "Normal":
      // Offset 0 is a real offset only in an external data file; otherwise
      // the entry is unallocated, whatever COPIED says (QEMU's
      // QCOW2_CLUSTER_UNALLOCATED).
      if (entry.hostOffset === 0 && !engine.externalData) {
        out.kind = "unallocated"
        out.hostOffset = undefined
        return undefined
      }
      out.kind = "data"
      out.hostOffset = entry.hostOffset
      return undefined
    case "Zero":
      // Version 2 has no zero flag: QEMU refuses to read through it (qcow2_get_host_offset).
      if (engine.version < 3) return preV3ZeroMessage({ l2Offset, index })
      out.kind = "zero"
      // Offset 0 means no preallocation here, even with an external data file (QCOW2_CLUSTER_ZERO_PLAIN).
      out.hostOffset = entry.hostOffset === 0 ? undefined : entry.hostOffset
      return undefined
    case "Compressed":
      if (engine.externalData) return `Compressed cluster entry found in image with external data file ${slotText({ l2Offset, index })}`
      out.kind = "compressed"
      out.hostOffset = entry.hostOffset
      out.compressedSize = entry.compressedSize
      return undefined
    case "Subclusters": {
      const bit = 1 << unit
      const hasHost = entry.hostOffset !== 0 || engine.externalData
      if ((entry.allocatedMask & bit) !== 0) {
        if (!hasHost) return `Invalid cluster entry found  ${slotText({ l2Offset, index })}`
        out.kind = "data"
        out.hostOffset = entry.hostOffset + unit * engine.geometry.subclusterSize
      } else if ((entry.zeroMask & bit) !== 0) {
        out.kind = "zero"
        out.hostOffset = hasHost ? entry.hostOffset + unit * engine.geometry.subclusterSize : undefined
      } else {
        out.kind = "unallocated"
        out.hostOffset = hasHost ? entry.hostOffset + unit * engine.geometry.subclusterSize : undefined
      }
      return undefined
    }
    case "Invalid":
      if (engine.version < 3 && !engine.geometry.extendedL2 && hasZeroFlag(entry)) return preV3ZeroMessage({ l2Offset, index })
      return readDamageMessage(entry, { l2Offset, index })
  }
}

/** One whole compressed cluster of a batch: its host bytes and where it decompresses to. */
export interface CompressedPiece {
  readonly hostOffset: number
  readonly compressedSize: number
  readonly out: Uint8Array
}

/**
 * Largest host span read in one request for a batch of compressed clusters
 * (QEMU reads each one on its own; packed neighbours cost one read here).
 */
export const COMPRESSED_SPAN_LIMIT = 256 * 1024

/**
 * Buffers for the stored bytes of compressed clusters, reused from one read
 * to the next. A fresh buffer per read costs a page fault per page on the
 * first copy into it and a collection later (a 1 GiB zstd image → raw:
 * ~4000 reads, about a tenth of the event loop's time). Only a read that
 * ended gives its buffer back: an interrupted one may still have a file
 * read under way into it, so that buffer is left to the collector.
 */
export class CompressedReadBuffers {
  private readonly free: Array<Uint8Array> = []

  /** A buffer of at least `length` bytes (a view of exactly `length`); fresh past COMPRESSED_SPAN_LIMIT. */
  take(length: number): Uint8Array {
    if (length > COMPRESSED_SPAN_LIMIT) return new Uint8Array(length)
    return (this.free.pop() ?? new Uint8Array(COMPRESSED_SPAN_LIMIT)).subarray(0, length)
  }

  /** Hands back a buffer from `take` whose read and decompression have ended; keeps a few. */
  give(buffer: Uint8Array): void {
    if (buffer.buffer.byteLength === COMPRESSED_SPAN_LIMIT && this.free.length < 8) this.free.push(new Uint8Array(buffer.buffer))
  }
}

/**
 * Reads and decompresses whole compressed clusters whose host bytes lie
 * within [start, end) (at most COMPRESSED_SPAN_LIMIT, see readGuest) with
 * one storage read, then decompresses each into its `out`.
 */
export function readCompressedClusters(
  engine: Qcow2Engine,
  pieces: ReadonlyArray<CompressedPiece>,
  start: number,
  end: number
): Effect.Effect<void, ClusterError | StorageError> {
  if (pieces.length === 1) return readCompressedCluster(engine, pieces[0].hostOffset, pieces[0].compressedSize, pieces[0].out)
  const g = engine.geometry
  for (const p of pieces) {
    if (p.compressedSize <= 0 || p.compressedSize > 2 * g.clusterSize + 512) {
      return engine.integrity.markCorrupt(`compressed cluster at ${p.hostOffset} has an impossible size ${p.compressedSize}`, p.hostOffset)
    }
  }
  const span = engine.compressedReads.take(end - start)
  const decompressed = Effect.flatMap(engine.storage.read(start, span), () =>
    Effect.forEach(
      pieces,
      (p) =>
        Effect.mapError(
          engine.codec.decompress(span.subarray(p.hostOffset - start, p.hostOffset - start + p.compressedSize), p.out),
          (error: DecompressionError) =>
            new ClusterError({
              reason: "Corrupt",
              message: `compressed cluster at host offset ${p.hostOffset} (${p.compressedSize} bytes) does not decompress: ${error.message}`,
              offset: p.hostOffset
            })
        ),
      { discard: true }
    )
  )
  return Effect.map(decompressed, () => engine.compressedReads.give(span))
}

/** Reads a whole compressed cluster's stored bytes and decompresses it into `out` (one cluster). */
export function readCompressedCluster(
  engine: Qcow2Engine,
  hostOffset: number,
  compressedSize: number,
  out: Uint8Array
): Effect.Effect<void, ClusterError | StorageError> {
  const g = engine.geometry
  if (compressedSize <= 0 || compressedSize > 2 * g.clusterSize + 512) {
    return engine.integrity.markCorrupt(`compressed cluster at ${hostOffset} has an impossible size ${compressedSize}`, hostOffset)
  }
  const input = engine.compressedReads.take(compressedSize)
  const decompressed = Effect.flatMap(Effect.andThen(debugPoint(engine.storage, "read_compressed"), engine.storage.read(hostOffset, input)), () =>
    Effect.mapError(
      engine.codec.decompress(input, out),
      (error: DecompressionError) =>
        new ClusterError({
          reason: "Corrupt",
          message: `compressed cluster at host offset ${hostOffset} (${compressedSize} bytes) does not decompress: ${error.message}`,
          offset: hostOffset
        })
    )
  )
  return Effect.map(decompressed, () => engine.compressedReads.give(input))
}

