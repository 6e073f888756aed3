import { Effect } from "effect"
import { readL1Entry, readL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import type { ClusterContext, ClusterFailure } from "./context.js"
import { ClusterError } from "./errors.js"

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
export const l2Coverage = (ctx: ClusterContext): number => ctx.geometry.clusterSize * ctx.geometry.l2Entries

/**
 * The L2 table offset for guest `offset`, or 0 when its L1 entry is empty.
 * An L1 entry with reserved bits or an unaligned offset is corruption.
 */
export function l2TableOffset(ctx: ClusterContext, offset: number): Effect.Effect<number, ClusterFailure> {
  const l1Index = Math.floor(offset / l2Coverage(ctx))
  if (l1Index >= ctx.l1Size) return Effect.succeed(0)
  let entry
  try {
    entry = readL1Entry(ctx.l1, l1Index)
  } catch {
    return ctx.corrupt(`L1 entry ${l1Index} points past 2^53`, ctx.l1Offset + l1Index * 8)
  }
  if (entry.l2Offset !== 0 && entry.l2Offset % ctx.geometry.clusterSize !== 0) {
    return ctx.corrupt(`L2 table offset ${entry.l2Offset} of L1 entry ${l1Index} is not cluster aligned`, ctx.l1Offset + l1Index * 8)
  }
  if (entry.l2Offset !== 0) {
    const overlap = ctx.overlapsMetadata(entry.l2Offset, ctx.geometry.clusterSize, "l2")
    if (overlap !== undefined) {
      return ctx.corrupt(`L2 table at ${entry.l2Offset} (L1 entry ${l1Index}) overlaps the ${overlap}`, entry.l2Offset)
    }
  }
  return Effect.succeed(entry.l2Offset)
}

/** Loads (or finds cached) the L2 table at `l2Offset`. */
export function loadL2(ctx: ClusterContext, l2Offset: number): Effect.Effect<Uint8Array, StorageError> {
  const cached = ctx.l2Cache.lookup(l2Offset)
  return cached !== undefined ? Effect.succeed(cached) : ctx.l2Cache.get(l2Offset)
}

/**
 * The mapping of guest bytes [offset, offset + maxLength), as one run of the
 * same kind (merging adjacent clusters where the host side is contiguous
 * too). Never crosses an L2 table; callers loop.
 */
export function lookup(ctx: ClusterContext, offset: number, maxLength: number): Effect.Effect<MappingRun, ClusterFailure> {
  const coverage = l2Coverage(ctx)
  const tableStart = Math.floor(offset / coverage) * coverage
  const limit = Math.min(maxLength, tableStart + coverage - offset)
  return Effect.flatMap(l2TableOffset(ctx, offset), (l2Offset) => {
    if (l2Offset === 0) return Effect.succeed<MappingRun>({ kind: "unallocated", length: limit, hostOffset: undefined })
    const cached = ctx.l2Cache.lookup(l2Offset)
    if (cached !== undefined) return scanTable(ctx, cached, offset, limit)
    return Effect.flatMap(ctx.l2Cache.get(l2Offset), (table) => scanTable(ctx, table, offset, limit))
  })
}

/** Per-unit status while scanning: a subcluster (extended L2) or a cluster. */
interface Unit {
  kind: MappingRun["kind"]
  hostOffset: number | undefined
  compressedSize: number
}

function scanTable(ctx: ClusterContext, table: Uint8Array, offset: number, limit: number): Effect.Effect<MappingRun, ClusterFailure> {
  const g = ctx.geometry
  const unitSize = g.subclusterSize
  const unitsPerCluster = g.subclustersPerCluster
  const clusterIndex = Math.floor(offset / g.clusterSize)
  let l2Index = clusterIndex % g.l2Entries
  let unit = Math.floor((offset % g.clusterSize) / unitSize)
  const offsetInUnit = offset % unitSize
  let entry = readL2Entry(table, l2Index, g)
  const first: Unit = { kind: "unallocated", hostOffset: undefined, compressedSize: 0 }
  const bad = classify(ctx, entry, unit, first)
  if (bad !== undefined) return ctx.corrupt(`L2 entry for guest offset ${clusterIndex * g.clusterSize}: ${bad}`, offset)
  if (first.kind === "compressed") {
    const offsetInCluster = offset % g.clusterSize
    return Effect.succeed({
      kind: "compressed",
      length: Math.min(limit, g.clusterSize - offsetInCluster),
      hostOffset: first.hostOffset!,
      compressedSize: first.compressedSize,
      offsetInCluster
    })
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
      entry = readL2Entry(table, l2Index, g)
    }
    if (classify(ctx, entry, unit, next) !== undefined) break
    if (next.kind !== first.kind) break
    if (first.kind === "data" && next.hostOffset !== expectedHost) break
    if (first.kind !== "data" && (next.hostOffset === undefined) !== (first.hostOffset === undefined)) break
    if (expectedHost !== undefined && next.hostOffset !== undefined) expectedHost = next.hostOffset + unitSize
    length += unitSize
  }
  length = Math.min(length, limit)
  if (first.kind === "data") {
    return Effect.succeed({ kind: "data", length, hostOffset: first.hostOffset! + offsetInUnit })
  }
  if (first.kind === "zero") return Effect.succeed({ kind: "zero", length, hostOffset: first.hostOffset })
  return Effect.succeed({ kind: "unallocated", length, hostOffset: first.hostOffset })
}

/**
 * Fills `out` with the status of subcluster `unit` of `entry`; returns a
 * reason string when the entry is invalid.
 */
function classify(ctx: ClusterContext, entry: L2Entry, unit: number, out: Unit): string | undefined {
  out.compressedSize = 0
  switch (entry._tag) {
    case "Unallocated":
      out.kind = "unallocated"
      out.hostOffset = undefined
      return undefined
    case "Normal":
      out.kind = "data"
      out.hostOffset = dataHost(ctx, entry.hostOffset)
      return undefined
    case "Zero":
      out.kind = "zero"
      // Offset 0 means no preallocation here, even with an external data file (QCOW2_CLUSTER_ZERO_PLAIN).
      out.hostOffset = entry.hostOffset === 0 ? undefined : entry.hostOffset
      return undefined
    case "Compressed":
      if (ctx.externalData) return "compressed cluster in an image with an external data file"
      out.kind = "compressed"
      out.hostOffset = entry.hostOffset
      out.compressedSize = entry.compressedSize
      return undefined
    case "Subclusters": {
      const bit = 1 << unit
      const hasHost = entry.hostOffset !== 0 || entry.copied
      if ((entry.allocatedMask & bit) !== 0) {
        out.kind = "data"
        out.hostOffset = dataHost(ctx, entry.hostOffset) + unit * ctx.geometry.subclusterSize
      } else if ((entry.zeroMask & bit) !== 0) {
        out.kind = "zero"
        out.hostOffset = hasHost ? entry.hostOffset + unit * ctx.geometry.subclusterSize : undefined
      } else {
        out.kind = "unallocated"
        out.hostOffset = hasHost ? entry.hostOffset + unit * ctx.geometry.subclusterSize : undefined
      }
      return undefined
    }
    case "Invalid":
      return entry.reason
  }
}

const dataHost = (_ctx: ClusterContext, hostOffset: number): number => hostOffset

/** Reads a whole compressed cluster's stored bytes and decompresses it into `out` (one cluster). */
export function readCompressedCluster(
  ctx: ClusterContext,
  hostOffset: number,
  compressedSize: number,
  out: Uint8Array
): Effect.Effect<void, ClusterFailure> {
  const g = ctx.geometry
  if (compressedSize <= 0 || compressedSize > 2 * g.clusterSize + 512) {
    return ctx.corrupt(`compressed cluster at ${hostOffset} has an impossible size ${compressedSize}`, hostOffset)
  }
  const input = new Uint8Array(compressedSize)
  return Effect.flatMap(ctx.storage.read(hostOffset, input), () =>
    Effect.mapError(
      ctx.decompress(input, out),
      (error) =>
        new ClusterError({
          reason: "Corrupt",
          message: `compressed cluster at host offset ${hostOffset} (${compressedSize} bytes) does not decompress: ${describe(error)}`,
          offset: hostOffset
        })
    )
  )
}

const describe = (e: unknown): string =>
  typeof e === "object" && e !== null && "message" in e ? String((e as { message: unknown }).message) : String(e)
