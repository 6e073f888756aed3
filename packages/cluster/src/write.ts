import { Deferred, Effect } from "effect"
import { readL2Entry, writeL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { ClusterContext, ClusterFailure } from "./context.js"
import { ClusterError } from "./errors.js"
import { prepareL2ForWrite } from "./l1.js"
import { l2Coverage, l2TableOffset, loadL2 } from "./mapping.js"
import { forgetDecompressed, readGuest } from "./read.js"

const ALL_SUBCLUSTERS = 0xffffffff

/** What to do for the next part of a write, decided under the metadata lock. */
type WritePlan =
  | { readonly _tag: "Wait"; readonly done: Deferred.Deferred<void> }
  /** Clusters owned by this image alone (COPIED): write the data in place. */
  | { readonly _tag: "InPlace"; readonly hostOffset: number; readonly length: number }
  /** New host clusters (or new subclusters of an owned one): copy-on-write, then link. */
  | {
      readonly _tag: "Allocate"
      readonly length: number
      readonly firstCluster: number
      readonly clusters: number
      /** Host offset of the first cluster of the run. */
      readonly hostOffset: number
      /** Whether the host clusters were allocated here (freed again on failure). */
      readonly fresh: boolean
      /** Guest range [cowStart, cowEnd) written to the host: data plus copied head and tail. */
      readonly cowStart: number
      readonly cowEnd: number
      /** Extended L2: subcluster masks of the single cluster after the write. */
      readonly allocatedMask: number
      readonly zeroMask: number
      readonly release: Effect.Effect<void>
      /** Set once linking starts: from then on the clusters are not abandoned on failure. */
      readonly progress: { linked: boolean }
    }

const isOwned = (ctx: ClusterContext, entry: L2Entry): boolean =>
  (entry._tag === "Normal" || entry._tag === "Subclusters") && entry.copied && (entry.hostOffset !== 0 || ctx.externalData)

/**
 * Writes guest bytes (spec "Cluster mapping"; QEMU's allocating write path).
 * Clusters this image owns (COPIED) are written in place. Others get new
 * host clusters: the untouched head and tail are copied from wherever the
 * old data lived (backing file, shared cluster, compressed cluster, zero),
 * the data reaches storage, and only then the L2 entries are linked and
 * what they replaced is freed. Data I/O runs outside the metadata lock; a
 * write that meets an allocation in flight waits for it and looks again.
 */
export function writeGuest(ctx: ClusterContext, offset: number, data: Uint8Array): Effect.Effect<void, ClusterFailure | unknown> {
  return Effect.gen(function* () {
    let done = 0
    while (done < data.length) done += yield* writeStep(ctx, offset + done, data.subarray(done))
  })
}

function writeStep(ctx: ClusterContext, offset: number, data: Uint8Array): Effect.Effect<number, ClusterFailure | unknown> {
  return Effect.gen(function* () {
    for (;;) {
      if (!ctx.writable()) {
        return yield* new ClusterError({ reason: "ReadOnly", message: `${ctx.location} is read-only`, offset })
      }
      const plan = yield* ctx.lock.withPermits(1)(planWrite(ctx, offset, data))
      switch (plan._tag) {
        case "Wait":
          yield* Deferred.await(plan.done)
          continue
        case "InPlace":
          yield* writeData(ctx, offset, plan.hostOffset, data.subarray(0, plan.length))
          return plan.length
        case "Allocate":
          yield* Effect.onExit(performAllocation(ctx, offset, data, plan), (exit) =>
            exit._tag === "Success" ? plan.release : Effect.andThen(abandon(ctx, plan), plan.release)
          )
          return plan.length
      }
    }
  })
}

/** Writes data bytes to the data file, encrypting first when the image is encrypted. */
export function writeData(ctx: ClusterContext, guestOffset: number, hostOffset: number, data: Uint8Array): Effect.Effect<void, ClusterFailure> {
  const crypto = ctx.crypto
  if (crypto === undefined) return ctx.data.write(hostOffset, data)
  if (hostOffset % 512 !== 0 || data.length % 512 !== 0) {
    return Effect.die(new ClusterError({ reason: "InvalidArgument", message: "encrypted writes must be whole 512-byte sectors" }))
  }
  const copy = data.slice()
  crypto.encrypt(crypto.ivFrom === "host" ? hostOffset : guestOffset, copy)
  return ctx.data.write(hostOffset, copy)
}

function planWrite(ctx: ClusterContext, offset: number, data: Uint8Array): Effect.Effect<WritePlan, ClusterFailure> {
  return Effect.gen(function* () {
    const g = ctx.geometry
    const cs = g.clusterSize
    const coverage = l2Coverage(ctx)
    const tableEnd = (Math.floor(offset / coverage) + 1) * coverage
    const length = Math.min(data.length, tableEnd - offset)
    const firstCluster = Math.floor(offset / cs)
    const lastCluster = Math.floor((offset + length - 1) / cs)
    const waiting = ctx.inflight.overlapping(firstCluster, lastCluster)
    if (waiting !== undefined) return { _tag: "Wait", done: waiting } as const

    const l2Offset = yield* prepareL2ForWrite(ctx, offset)
    const table = yield* loadL2(ctx, l2Offset)
    const firstIndex = firstCluster % g.l2Entries
    const inCluster = offset - firstCluster * cs
    const entry = readL2Entry(table, firstIndex, g)
    if (entry._tag === "Invalid") {
      return yield* ctx.corrupt(`L2 entry for guest offset ${firstCluster * cs}: ${entry.reason}`, offset)
    }

    if (!g.extendedL2) {
      if (isOwned(ctx, entry)) {
        // Extend over following owned clusters that are contiguous on the host.
        const host = (entry as { hostOffset: number }).hostOffset
        let clusters = 1
        while (firstCluster + clusters <= lastCluster) {
          const next = readL2Entry(table, firstIndex + clusters, g)
          if (!isOwned(ctx, next) || (next as { hostOffset: number }).hostOffset !== host + clusters * cs) break
          clusters++
        }
        const bytes = Math.min(length, clusters * cs - inCluster)
        return yield* inPlace(ctx, host + inCluster, bytes)
      }
      let clusters = 1
      while (firstCluster + clusters <= lastCluster && !isOwned(ctx, readL2Entry(table, firstIndex + clusters, g))) clusters++
      const bytes = Math.min(length, clusters * cs - inCluster)
      return yield* allocate(ctx, {
        offset,
        length: bytes,
        firstCluster,
        clusters,
        cowStart: firstCluster * cs,
        cowEnd: (firstCluster + clusters) * cs,
        existingHost: undefined,
        allocatedMask: ALL_SUBCLUSTERS,
        zeroMask: 0
      })
    }

    // Extended L2: one cluster per step, subcluster granularity.
    const bytes = Math.min(length, cs - inCluster)
    const scs = g.subclusterSize
    const firstSub = Math.floor(inCluster / scs)
    const lastSub = Math.floor((inCluster + bytes - 1) / scs)
    const touched = lastSub - firstSub === 31 ? ALL_SUBCLUSTERS : (((1 << (lastSub - firstSub + 1)) - 1) << firstSub) >>> 0
    const clusterStart = firstCluster * cs
    if (entry._tag === "Subclusters" && isOwned(ctx, entry)) {
      if (((entry.allocatedMask & touched) >>> 0) === touched) return yield* inPlace(ctx, entry.hostOffset + inCluster, bytes)
      return yield* allocate(ctx, {
        offset,
        length: bytes,
        firstCluster,
        clusters: 1,
        cowStart: clusterStart + firstSub * scs,
        cowEnd: clusterStart + (lastSub + 1) * scs,
        existingHost: entry.hostOffset,
        allocatedMask: (entry.allocatedMask | touched) >>> 0,
        zeroMask: (entry.zeroMask & ~touched) >>> 0
      })
    }
    if (entry._tag === "Subclusters" && entry.hostOffset === 0 && !entry.copied) {
      return yield* allocate(ctx, {
        offset,
        length: bytes,
        firstCluster,
        clusters: 1,
        cowStart: clusterStart + firstSub * scs,
        cowEnd: clusterStart + (lastSub + 1) * scs,
        existingHost: undefined,
        allocatedMask: (entry.allocatedMask | touched) >>> 0,
        zeroMask: (entry.zeroMask & ~touched) >>> 0
      })
    }
    // Shared or compressed: a whole new cluster holding the old content.
    return yield* allocate(ctx, {
      offset,
      length: bytes,
      firstCluster,
      clusters: 1,
      cowStart: clusterStart,
      cowEnd: clusterStart + cs,
      existingHost: undefined,
      allocatedMask: ALL_SUBCLUSTERS,
      zeroMask: 0
    })
  })
}

function inPlace(ctx: ClusterContext, hostOffset: number, length: number): Effect.Effect<WritePlan, ClusterFailure> {
  const overlap = ctx.overlapsMetadata(hostOffset, length)
  if (overlap !== undefined && !ctx.externalData) {
    return ctx.corrupt(`data write at host offset ${hostOffset} would overwrite the ${overlap}`, hostOffset)
  }
  return Effect.succeed({ _tag: "InPlace", hostOffset, length })
}

interface AllocationRequest {
  readonly offset: number
  readonly length: number
  readonly firstCluster: number
  readonly clusters: number
  readonly cowStart: number
  readonly cowEnd: number
  readonly existingHost: number | undefined
  readonly allocatedMask: number
  readonly zeroMask: number
}

function allocate(ctx: ClusterContext, request: AllocationRequest): Effect.Effect<WritePlan, ClusterFailure> {
  return Effect.gen(function* () {
    const cs = ctx.geometry.clusterSize
    let hostOffset: number
    let fresh = false
    if (request.existingHost !== undefined) {
      hostOffset = request.existingHost
    } else if (ctx.externalData) {
      // Spec "External data file": guest offset == host offset in the data file.
      hostOffset = request.firstCluster * cs
    } else {
      hostOffset = yield* ctx.refcounts.allocate(request.clusters)
      fresh = true
      const overlap = ctx.overlapsMetadata(hostOffset, request.clusters * cs)
      if (overlap !== undefined) return yield* ctx.corrupt(`newly allocated cluster at ${hostOffset} overlaps the ${overlap}`, hostOffset)
    }
    const release = yield* ctx.inflight.register(request.firstCluster, request.firstCluster + request.clusters - 1)
    return {
      _tag: "Allocate",
      length: request.length,
      firstCluster: request.firstCluster,
      clusters: request.clusters,
      hostOffset,
      fresh,
      cowStart: request.cowStart,
      cowEnd: Math.max(request.cowEnd, request.offset + request.length),
      allocatedMask: request.allocatedMask,
      zeroMask: request.zeroMask,
      release,
      progress: { linked: false }
    } as const
  })
}

/** Copy-on-write outside the lock, then link the L2 entries under it. */
function performAllocation(
  ctx: ClusterContext,
  offset: number,
  data: Uint8Array,
  plan: Extract<WritePlan, { _tag: "Allocate" }>
): Effect.Effect<void, ClusterFailure | unknown> {
  return Effect.gen(function* () {
    const cs = ctx.geometry.clusterSize
    const runStart = plan.firstCluster * cs
    const head = offset - plan.cowStart
    const tailStart = offset + plan.length
    let buffer: Uint8Array
    if (head === 0 && tailStart === plan.cowEnd) {
      buffer = data.subarray(0, plan.length)
    } else {
      buffer = new Uint8Array(plan.cowEnd - plan.cowStart)
      if (head > 0) yield* readGuest(ctx, plan.cowStart, buffer.subarray(0, head))
      buffer.set(data.subarray(0, plan.length), head)
      if (tailStart < plan.cowEnd) yield* readGuest(ctx, tailStart, buffer.subarray(tailStart - plan.cowStart))
    }
    yield* writeData(ctx, plan.cowStart, plan.hostOffset + (plan.cowStart - runStart), buffer)
    plan.progress.linked = true
    yield* ctx.lock.withPermits(1)(link(ctx, plan))
  })
}

/** Points the L2 entries at the new clusters and frees what they replaced (rules 1–3). */
function link(ctx: ClusterContext, plan: Extract<WritePlan, { _tag: "Allocate" }>): Effect.Effect<void, ClusterFailure> {
  return Effect.gen(function* () {
    const g = ctx.geometry
    const cs = g.clusterSize
    const guest = plan.firstCluster * cs
    const l2Offset = yield* l2TableOffset(ctx, guest)
    if (l2Offset === 0) return yield* ctx.corrupt(`L2 table for guest offset ${guest} vanished during a write`, guest)
    // Rule 1: the new clusters' refcounts are written before the L2 entry.
    // The dependency is set before the table changes, so that settling an
    // opposite (free path) dependency cannot write the new entry early.
    if (!ctx.lazyRefcounts && plan.fresh) yield* ctx.l2Cache.dependOn(ctx.refcounts.cache)
    const table = yield* loadL2(ctx, l2Offset)
    const firstIndex = plan.firstCluster % g.l2Entries
    const frees: Array<{ offset: number; length: number }> = []
    let freedCompressed = false
    for (let i = 0; i < plan.clusters; i++) {
      const old = readL2Entry(table, firstIndex + i, g)
      const host = plan.hostOffset + i * cs
      if (g.extendedL2) {
        writeL2Entry(table, firstIndex + i, { _tag: "Subclusters", hostOffset: host, copied: true, allocatedMask: plan.allocatedMask, zeroMask: plan.zeroMask }, g)
      } else {
        writeL2Entry(table, firstIndex + i, { _tag: "Normal", hostOffset: host, copied: true }, g)
      }
      if (ctx.externalData) continue
      switch (old._tag) {
        case "Normal":
        case "Zero":
        case "Subclusters":
          if (old.hostOffset !== 0 && old.hostOffset !== host) frees.push({ offset: old.hostOffset, length: cs })
          break
        case "Compressed":
          frees.push({ offset: old.hostOffset, length: old.compressedSize })
          freedCompressed = true
          break
        default:
          break
      }
    }
    ctx.l2Cache.markDirty(l2Offset)
    // Rule 2: the data (and copied head/tail) is durable before the L2 entry.
    ctx.l2Cache.dependOnStorageFlush()
    if (frees.length > 0) {
      // Rule 3: the L2 entry dropping a reference is written before the decrease.
      if (!ctx.lazyRefcounts) yield* ctx.refcounts.cache.dependOn(ctx.l2Cache)
      for (const f of frees) yield* ctx.refcounts.free(f.offset, f.length)
      if (freedCompressed) forgetDecompressed(ctx)
    }
  })
}

/** A failed allocating write: give back clusters that were never linked. */
function abandon(ctx: ClusterContext, plan: Extract<WritePlan, { _tag: "Allocate" }>): Effect.Effect<void> {
  if (!plan.fresh || plan.progress.linked) return Effect.void
  return ctx.lock
    .withPermits(1)(ctx.refcounts.free(plan.hostOffset, plan.clusters * ctx.geometry.clusterSize))
    .pipe(Effect.ignore)
}
