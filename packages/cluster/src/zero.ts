import { Effect } from "effect"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { discardClusters, zeroClusters, zeroClustersHeld, zeroSubclusters, zeroSubclustersHeld } from "./discard.js"
import { lookup } from "./mapping.js"
import { readsAsZero } from "./status.js"
import { writeBytes } from "./write.js"

/**
 * Write-zeroes as QEMU does it (qcow2_co_pwrite_zeroes and the block layer
 * around it): whole (sub)clusters get the zero flag (v3) or are dropped (v2
 * without a backing file, where unallocated reads as zeros); a partial unit
 * at either end is widened to the whole unit when the rest of it already
 * reads as zeros and it holds no data, and otherwise gets zero bytes
 * written. Encrypted images and v2 images over a backing file get zero
 * bytes written throughout. The range is checked by the caller.
 */
export function writeZeroes(engine: Qcow2Engine, offset: number, length: number, unmap: boolean): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const end = offset + length
    if (engine.crypto !== undefined || (engine.version < 3 && engine.backing !== undefined)) return yield* zeroBytes(engine, offset, length)
    const unit = engine.geometry.subclusterSize
    const size = engine.header.size
    const unitEndOf = (start: number) => Math.min(start + unit, size)
    const firstUnit = Math.floor(offset / unit) * unit
    const lastUnit = Math.floor((end - 1) / unit) * unit
    if (firstUnit === lastUnit) {
      if (offset === firstUnit && end === unitEndOf(firstUnit)) return yield* zeroAligned(engine, offset, length, unmap)
      return yield* zeroPartialUnit(engine, firstUnit, unitEndOf(firstUnit), offset, end, unmap)
    }
    let middleStart = offset
    if (offset !== firstUnit) {
      yield* zeroPartialUnit(engine, firstUnit, firstUnit + unit, offset, firstUnit + unit, unmap)
      middleStart = firstUnit + unit
    }
    const tailPartial = end !== unitEndOf(lastUnit)
    const middleEnd = tailPartial ? lastUnit : end
    if (middleEnd > middleStart) yield* zeroAligned(engine, middleStart, middleEnd - middleStart, unmap)
    if (tailPartial) yield* zeroPartialUnit(engine, lastUnit, unitEndOf(lastUnit), lastUnit, end, unmap)
  })
}

/** Writes zero bytes over [offset, offset + length), a MiB at a time. */
function zeroBytes(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<void, EngineFailure> {
  const chunk = new Uint8Array(Math.min(length, 1 << 20))
  return Effect.gen(function* () {
    for (let done = 0; done < length; done += chunk.length) {
      yield* writeBytes(engine, offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)))
    }
  })
}

/**
 * Zeroes one partial unit (subcluster or cluster): QEMU widens it to the
 * whole unit when the rest already reads as zeros. Decided and done under
 * one hold of the lock once no allocation over the cluster is in flight
 * (QEMU re-checks is_zero under s->lock): a concurrent write allocating
 * the cluster must not be wiped by a widening decided before it landed.
 */
function zeroPartialUnit(engine: Qcow2Engine, unitStart: number, unitEnd: number, offset: number, end: number, unmap: boolean) {
  const cluster = Math.floor(unitStart / engine.geometry.clusterSize)
  const widenHeld = Effect.gen(function* () {
    const kind = (yield* lookup(engine, unitStart, 1)).kind
    const widen =
      (kind === "unallocated" || kind === "zero") &&
      (yield* readsAsZero(engine, unitStart, offset - unitStart)) &&
      (yield* readsAsZero(engine, end, unitEnd - end))
    if (!widen) return false
    yield* zeroUnitHeld(engine, unitStart, unitEnd, unmap)
    return true
  })
  return Effect.gen(function* () {
    const widened = yield* engine.inflight.whenSettled(engine.lock, cluster, cluster, widenHeld)
    if (!widened) yield* zeroBytes(engine, offset, end - offset)
  })
}

/**
 * Makes one unallocated or zero unit read as zeros, with the lock held:
 * on v2 (no backing file here) such a unit is unallocated and reads as
 * zeros already; whole clusters get the zero flag, subclusters their bits.
 */
function zeroUnitHeld(engine: Qcow2Engine, unitStart: number, unitEnd: number, unmap: boolean): Effect.Effect<void, EngineFailure> {
  if (engine.version < 3) return Effect.void
  const g = engine.geometry
  const wholeCluster = unitStart % g.clusterSize === 0 && (unitEnd - unitStart === g.clusterSize || unitEnd === engine.header.size)
  return g.extendedL2 && !wholeCluster ? Effect.asVoid(zeroSubclustersHeld(engine, unitStart, unitEnd - unitStart)) : zeroClustersHeld(engine, unitStart, unitEnd, unmap)
}

/**
 * Zeroes an aligned range: whole clusters by flag, partial clusters by
 * subcluster bits; on v2 (no zero flag, no backing file) by dropping the
 * clusters, as QEMU does.
 */
function zeroAligned(engine: Qcow2Engine, offset: number, length: number, unmap: boolean): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    if (engine.version < 3) return yield* discardClusters(engine, offset, length)
    const cs = engine.geometry.clusterSize
    const end = offset + length
    let position = offset
    while (position < end) {
      const clusterStart = Math.floor(position / cs) * cs
      const clusterEnd = clusterStart + cs
      if (position === clusterStart) {
        let wholeEnd = Math.floor(end / cs) * cs
        if (end === engine.header.size && end > wholeEnd) wholeEnd = end
        if (wholeEnd > position) {
          yield* zeroClusters(engine, position, wholeEnd - position, unmap)
          position = wholeEnd
          continue
        }
      }
      const stop = Math.min(end, clusterEnd)
      const done = yield* zeroSubclusters(engine, position, stop - position)
      if (!done) yield* zeroBytes(engine, position, stop - position)
      position = stop
    }
  })
}
