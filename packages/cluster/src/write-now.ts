import { Effect } from "effect"
import { readL2EntryForIo, writeL2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { isKept, replacedHostRange } from "./l2.js"
import { l2Coverage } from "./mapping.js"
import { ALL_SUBCLUSTERS } from "./subcluster-write.js"
import type { WritePlan } from "./write.js"

/**
 * The allocating write's placement and linking in plain code (DESIGN.md
 * "Where Effect sits"), for their common case: a standard L2 table this
 * image owns, cached, over clusters that need new host clusters, whose
 * refcount blocks are cached too. A 1 GiB convert places ~1,000 writes,
 * and each took ~60 Effect steps under the lock; here it takes none.
 *
 * Both run only while no holder of the metadata lock is in the middle of
 * its work (`MetadataLock.isFree`) and finish in one synchronous stretch,
 * so they act as if they held the lock. Whatever they do not cover (a
 * table to load or make, extended L2, an external data file, debug hooks,
 * an entry to report, a cluster to free or keep, a refcount block to
 * load or make) makes them answer undefined / false with nothing changed,
 * and the caller takes the locked path (write.ts), which decides the same
 * cases the same way.
 */

/** Whether plain code may place or link now: the lock is free, a standard L2 table, no external data file, no debug hooks. */
const runsNow = (engine: Qcow2Engine): boolean =>
  engine.lock.isFree &&
  !engine.geometry.extendedL2 &&
  !engine.externalData &&
  engine.storage.debugEvent === undefined &&
  engine.storage.debugBreak === undefined

/**
 * write.ts planWrite's Allocate plan for a run of clusters with no kept
 * host cluster, made now: the same host clusters (after the previous part
 * of the write when free there, else where the allocator's search finds
 * them), the same refcounts, the same in-flight registration. An Effect
 * only to report a metadata overlap (as planWrite's guardWrite would);
 * undefined when the locked path is needed.
 */
export function planWriteNow(
  engine: Qcow2Engine,
  offset: number,
  length: number,
  after: number | undefined
): Effect.Effect<WritePlan, EngineFailure> | undefined {
  if (!runsNow(engine)) return undefined
  const g = engine.geometry
  const cs = g.clusterSize
  const coverage = l2Coverage(engine)
  const l1Index = Math.floor(offset / coverage)
  const inTable = Math.min(length, (l1Index + 1) * coverage - offset)
  const firstCluster = Math.floor(offset / cs)
  const lastCluster = Math.floor((offset + inTable - 1) / cs)
  if (engine.inflight.overlapping(firstCluster, lastCluster) !== undefined) return undefined
  const l2Offset = engine.l1.plainL2Offset(l1Index, true)
  const table = l2Offset === undefined ? undefined : engine.l2Cache.lookup(l2Offset)
  if (table === undefined) return undefined
  const firstIndex = firstCluster % g.l2Entries
  const first = readL2EntryForIo(table, firstIndex, g)
  if (first._tag === "Invalid" || isKept(engine, first)) return undefined
  let clusters = 1
  // A damaged entry ends the run: the locked path decides about it (write.ts planWrite).
  while (firstCluster + clusters <= lastCluster) {
    const next = readL2EntryForIo(table, firstIndex + clusters, g)
    if (next._tag === "Invalid" || isKept(engine, next)) break
    clusters++
  }

  let hostOffset: number | undefined
  if (after !== undefined && after % cs === 0) {
    const at = engine.refcounts.allocateAtNow(after / cs, clusters)
    if (at === undefined) return undefined
    if (at > 0) {
      // Only the clusters free there: the rest of the write is a later step.
      hostOffset = after
      clusters = at
    }
  }
  hostOffset ??= engine.refcounts.allocateNow(clusters)
  if (hostOffset === undefined) return undefined
  const runEnd = (firstCluster + clusters) * cs
  const host = hostOffset
  const plan = (): WritePlan => ({
    _tag: "Allocate",
    length: Math.min(inTable, runEnd - offset),
    firstCluster,
    clusters,
    hostOffset: host,
    fresh: true,
    cowStart: firstCluster * cs,
    cowEnd: runEnd,
    allocatedMask: ALL_SUBCLUSTERS,
    zeroMask: 0,
    release: engine.inflight.registerNow(firstCluster, firstCluster + clusters - 1),
    progress: { linked: false }
  })
  if (engine.integrity.mayWriteNow(host, clusters * cs)) return Effect.succeed(plan())
  return engine.lock.withPermits(1)(Effect.map(engine.integrity.guardWrite(host, clusters * cs), plan))
}

/**
 * write.ts link for an Allocate plan, done now: the L2 entries point at
 * the new clusters. False, with nothing changed, when the locked path is
 * needed (the table is not owned or not cached, or an entry replaced
 * holds a reference to drop).
 */
export function linkNow(engine: Qcow2Engine, plan: Extract<WritePlan, { _tag: "Allocate" }>): boolean {
  if (!runsNow(engine)) return false
  const g = engine.geometry
  const cs = g.clusterSize
  const l2Offset = engine.l1.plainL2Offset(Math.floor(plan.firstCluster / g.l2Entries), true)
  if (l2Offset === undefined) return false
  const table = engine.l2Cache.lookup(l2Offset)
  if (table === undefined) return false
  const firstIndex = plan.firstCluster % g.l2Entries
  // Anything replaced to free, or a damaged entry to report: the locked path (write.ts link).
  for (let i = 0; i < plan.clusters; i++) {
    const old = readL2EntryForIo(table, firstIndex + i, g)
    if (old._tag === "Invalid" || replacedHostRange(engine, old, plan.hostOffset + i * cs) !== undefined) return false
  }
  for (let i = 0; i < plan.clusters; i++) writeL2Entry(table, firstIndex + i, { _tag: "Normal", hostOffset: plan.hostOffset + i * cs, copied: true }, g)
  engine.l2Cache.markDirty(l2Offset)
  // Rule 2: the data is durable before the entries.
  engine.l2Cache.dependOnStorageFlush()
  return true
}
