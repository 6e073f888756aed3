import { Effect } from "effect"
import { Limits, readL1Entry, writeL1Entry } from "@qcow2/format"
import type { ClusterContext, ClusterFailure } from "./context.js"
import { ClusterError } from "./errors.js"
import { l2Coverage, l2TableOffset, loadL2 } from "./mapping.js"

/** Writes L1 entry `index` through to storage (rule 4). */
export function writeL1Through(ctx: ClusterContext, index: number): Effect.Effect<void, ClusterFailure> {
  return ctx.storage.write(ctx.l1Offset + index * 8, ctx.l1.subarray(index * 8, index * 8 + 8))
}

/**
 * Grows the active L1 table to at least `minEntries` entries: a new table is
 * allocated and written, the header switched to it, and the old one freed
 * (spec: L1 table; QEMU grows by half again each time).
 */
export function growL1(ctx: ClusterContext, minEntries: number): Effect.Effect<void, ClusterFailure> {
  return Effect.gen(function* () {
    if (minEntries <= ctx.l1Size) return
    const cs = ctx.geometry.clusterSize
    let entries = Math.max(minEntries, Math.ceil(ctx.l1Size * 1.5))
    if (entries * 8 > Limits.maxL1Bytes) entries = minEntries
    if (entries * 8 > Limits.maxL1Bytes) {
      return yield* new ClusterError({ reason: "InvalidArgument", message: `the L1 table would exceed ${Limits.maxL1Bytes} bytes` })
    }
    const clusters = Math.ceil((entries * 8) / cs)
    const table = new Uint8Array(clusters * cs)
    table.set(ctx.l1.subarray(0, ctx.l1Size * 8))
    const offset = yield* ctx.refcounts.allocate(clusters)
    const overlap = ctx.overlapsMetadata(offset, clusters * cs)
    if (overlap !== undefined) return yield* ctx.corrupt(`new L1 table at ${offset} overlaps the ${overlap}`, offset)
    if (!ctx.lazyRefcounts) yield* ctx.refcounts.flushBlocks()
    yield* ctx.storage.write(offset, table)
    yield* ctx.storage.flush()
    const old = { offset: ctx.l1Offset, size: ctx.l1Size }
    yield* ctx.commitL1(offset, entries)
    ctx.l1 = table
    ctx.l1Offset = offset
    ctx.l1Size = entries
    if (old.size > 0 && old.offset !== 0) {
      yield* ctx.refcounts.free(old.offset, Math.ceil((old.size * 8) / cs) * cs)
    }
  })
}

/**
 * The offset of an L2 table that may be written for guest `offset`:
 * allocates one when the L1 entry is empty, or copies a table shared with a
 * snapshot (L1 entry without COPIED). The new table reaches storage before
 * the L1 entry naming it, and its refcount before both (rules 1 and 4).
 * Call with the metadata lock held.
 */
export function prepareL2ForWrite(ctx: ClusterContext, offset: number): Effect.Effect<number, ClusterFailure> {
  return Effect.gen(function* () {
    const l1Index = Math.floor(offset / l2Coverage(ctx))
    if (l1Index >= ctx.l1Size) yield* growL1(ctx, l1Index + 1)
    const current = yield* l2TableOffset(ctx, offset)
    const entry = readL1Entry(ctx.l1, l1Index)
    if (current !== 0 && entry.copied) return current
    const cs = ctx.geometry.clusterSize
    const newOffset = yield* ctx.refcounts.allocate(1)
    const overlap = ctx.overlapsMetadata(newOffset, cs)
    if (overlap !== undefined) return yield* ctx.corrupt(`new L2 table at ${newOffset} overlaps the ${overlap}`, newOffset)
    const previous = current !== 0 ? yield* loadL2(ctx, current) : undefined
    const table = yield* ctx.l2Cache.getEmpty(newOffset)
    if (previous !== undefined) table.set(previous)
    ctx.l2Cache.markDirty(newOffset)
    if (!ctx.lazyRefcounts) yield* ctx.refcounts.flushBlocks()
    yield* ctx.l2Cache.flush()
    writeL1Entry(ctx.l1, l1Index, newOffset, true)
    yield* writeL1Through(ctx, l1Index)
    yield* ctx.storage.flush()
    if (current !== 0) yield* ctx.refcounts.free(current, cs)
    return newOffset
  })
}
