import { Effect } from "effect"
import { l1EntriesFor } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { discardClusters } from "./discard.js"
import { l2Coverage, lookup } from "./mapping.js"
import { preallocateClusters } from "./preallocate.js"

/** How `qemu-img resize --preallocation` fills a grown area. */
export type Preallocation = "off" | "metadata" | "falloc" | "full"

/**
 * Changes the virtual size (qemu-img resize; arguments checked by the
 * caller). Shrinking drops every cluster past the new end first; growing
 * makes room in the L1 table first. The header records the size last, and
 * the new area is then preallocated as asked.
 */
export function truncateImage(engine: Qcow2Engine, size: number, preallocation: Preallocation): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const oldSize = engine.header.size
    const cs = engine.geometry.clusterSize
    if (size < oldSize) yield* discardTail(engine, Math.ceil(size / cs) * cs, oldSize)
    yield* engine.lock.withPermits(1)(
      Effect.gen(function* () {
        if (size > oldSize) yield* engine.l1.grow(l1EntriesFor(size, engine.geometry), engine.refcounts)
        yield* engine.header.update({ size })
      })
    )
    if (preallocation !== "off" && size > oldSize) yield* preallocate(engine, oldSize, size, preallocation)
  })
}

/** Gives [from, to) host clusters and grows the file over them (zero-filled for "full"). */
function preallocate(engine: Qcow2Engine, from: number, to: number, mode: Exclude<Preallocation, "off">): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const hostEnd = yield* preallocateClusters(engine, from, to - from)
    yield* engine.flushMetadata()
    const target = engine.data
    const end = engine.externalData ? Math.ceil(to / cs) * cs : hostEnd
    const current = yield* target.size()
    if (end <= current) return
    if (mode === "full") {
      const zeros = new Uint8Array(Math.min(1 << 20, end - current))
      for (let p = current; p < end; p += zeros.length) yield* target.write(p, zeros.subarray(0, Math.min(zeros.length, end - p)))
    } else {
      yield* target.resize(end)
    }
  })
}

/** Drops every cluster in guest range [from, end) (a shrink), one L2 table at a time. */
function discardTail(engine: Qcow2Engine, from: number, oldSize: number): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const coverage = l2Coverage(engine)
    const end = Math.ceil(oldSize / cs) * cs
    for (let position = from; position < end; ) {
      const next = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
      const mapping = yield* lookup(engine, position, next - position)
      if (!(mapping.kind === "unallocated" && mapping.hostOffset === undefined && mapping.length === next - position)) {
        yield* discardClusters(engine, position, next - position)
      }
      position = next
    }
  })
}
