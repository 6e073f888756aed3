import { Effect } from "effect"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { discardClustersHeld, zeroClustersHeld, zeroSubclustersHeld } from "./discard.js"
import { lookup } from "./mapping.js"
import { readsAsZero } from "./status.js"
import { writeBytes } from "./write.js"

/** The block layer's largest write-zeroes request (INT_MAX, aligned down to the zero alignment). */
const MAX_ZERO_REQUEST = 2 ** 31 - 1

/**
 * Write-zeroes as QEMU does it. The block layer (block/io.c
 * bdrv_co_do_pwrite_zeroes) cuts the request at subcluster boundaries: an
 * unaligned head on its own, then the aligned bulk, then an unaligned
 * tail on its own. Each piece goes to the qcow2 driver
 * (qcow2_co_pwrite_zeroes, qcow2_subcluster_zeroize), which either makes
 * it read as zeros in the L2 tables (zero flag, all-zero subcluster bits,
 * or a discard on v2 without a backing file) or refuses, possibly after
 * changing some entries already; a refused piece gets zero bytes written.
 * Encrypted images and v2 images over a backing file get zero bytes
 * written throughout. The range is checked by the caller.
 */
export function writeZeroes(engine: Qcow2Engine, offset: number, length: number, unmap: boolean): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    if (engine.crypto !== undefined || (engine.version < 3 && engine.backing !== undefined)) return yield* zeroBytes(engine, offset, length)
    const alignment = engine.geometry.subclusterSize
    const maxRequest = Math.floor(MAX_ZERO_REQUEST / alignment) * alignment
    let head = offset % alignment
    const tail = (offset + length) % alignment
    let position = offset
    let remaining = length
    while (remaining > 0) {
      let piece = remaining
      if (head !== 0) {
        piece = Math.min(remaining, alignment - head)
        head = (head + piece) % alignment
      } else if (tail !== 0 && piece > alignment) {
        piece -= tail
      }
      piece = Math.min(piece, maxRequest)
      const zeroed = yield* zeroPiece(engine, position, piece, unmap)
      if (!zeroed) {
        // The block layer writes the refused piece as a request of its own: refused once a corruption event took the image away.
        const ejected = engine.requireMedium()
        if (ejected !== undefined) return yield* Effect.fail(ejected)
        yield* zeroBytes(engine, position, piece)
      }
      position += piece
      remaining -= piece
    }
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
 * One piece of a write-zeroes request in the qcow2 driver
 * (qcow2_co_pwrite_zeroes). A piece inside one subcluster is widened to
 * the whole subcluster when the rest of it reads as zeros and it holds no
 * data; otherwise it is refused. Decided and done under one hold of the
 * lock once no allocation over the clusters is in flight (QEMU re-checks
 * under s->lock): a concurrent write allocating there must not be wiped by
 * a widening decided before it landed. False: refused, write zero bytes.
 */
function zeroPiece(engine: Qcow2Engine, offset: number, length: number, unmap: boolean): Effect.Effect<boolean, EngineFailure> {
  const g = engine.geometry
  const size = engine.header.size
  const end = offset + length
  const head = offset % g.subclusterSize
  const tail = end === size ? 0 : Math.ceil(end / g.subclusterSize) * g.subclusterSize - end
  const start = offset - head
  const stop = head !== 0 || tail !== 0 ? start + g.subclusterSize : end
  const held = Effect.gen(function* () {
    if (head !== 0 || tail !== 0) {
      // QEMU's is_zero: a status that cannot be had is "not zero", and the piece is refused.
      const isZero = (at: number, bytes: number) => Effect.orElseSucceed(readsAsZero(engine, at, bytes), () => false)
      const restIsZero = (yield* isZero(start, head)) && (yield* isZero(end, Math.min(tail, size - end)))
      if (!restIsZero) return false
      const kind = (yield* lookup(engine, start, 1)).kind
      if (kind !== "unallocated" && kind !== "zero") return false
    }
    return yield* zeroize(engine, start, stop - start, unmap)
  })
  return engine.inflight.whenSettled(engine.lock, Math.floor(start / g.clusterSize), Math.floor((Math.min(stop, size) - 1) / g.clusterSize), held)
}

/**
 * Makes [offset, end of the image) read as zeros in the L2 tables, from a
 * subcluster-aligned `offset`: one zeroize up to the image end, so the last
 * cluster is zeroed whole (QEMU's truncate over a backing file calls
 * qcow2_subcluster_zeroize once, not through the block layer's split into
 * pieces). False when it cannot be done (see zeroize).
 */
export function zeroToEnd(engine: Qcow2Engine, offset: number): Effect.Effect<boolean, EngineFailure> {
  const cs = engine.geometry.clusterSize
  const size = engine.header.size
  return engine.inflight.whenSettled(engine.lock, Math.floor(offset / cs), Math.floor((size - 1) / cs), zeroize(engine, offset, size - offset, false))
}

/**
 * Makes subcluster-aligned [offset, offset + length) read as zeros in the
 * L2 tables (QEMU's qcow2_subcluster_zeroize), with the lock held: the
 * partial cluster at the start and at the end by their subcluster bits,
 * the whole clusters between (and a last partial one at the image end) by
 * the zero flag or all-zero bits. On v2 images (no zero flag) the range is
 * discarded when there is no backing file. False when it cannot be done
 * (a compressed cluster partly zeroed, v2 over a backing file), with the
 * entries changed so far left changed, as QEMU leaves them.
 */
function zeroize(engine: Qcow2Engine, offset: number, length: number, unmap: boolean): Effect.Effect<boolean, EngineFailure> {
  return Effect.gen(function* () {
    if (engine.version < 3) {
      if (engine.backing !== undefined) return false
      yield* discardClustersHeld(engine, offset, Math.min(offset + length, engine.header.size))
      return true
    }
    const g = engine.geometry
    const cs = g.clusterSize
    let start = offset
    let end = offset + length
    const head = Math.min(end, Math.ceil(start / cs) * cs) - start
    start += head
    const tail = end >= engine.header.size ? 0 : end - Math.max(start, Math.floor(end / cs) * cs)
    end -= tail
    if (head !== 0 && !(yield* zeroSubclustersHeld(engine, start - head, head))) return false
    if (end > start) yield* zeroClustersHeld(engine, start, Math.min(end, engine.header.size), unmap)
    if (tail !== 0 && !(yield* zeroSubclustersHeld(engine, end, tail))) return false
    return true
  })
}
