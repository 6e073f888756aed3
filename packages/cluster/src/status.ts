import { Effect } from "effect"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"
import { isStructuralDamage } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { lookup, lookupNow } from "./mapping.js"

/**
 * One extent of block status, shaped like a `qemu-img map --output=json`
 * record: `offset`..`offset+length` in guest bytes, found at `depth` in the
 * backing chain (0 = this image). When no layer has the bytes, `present` is
 * false and `depth` is the index of the last layer consulted (QEMU's rule).
 */
export interface BlockStatus {
  readonly offset: number
  readonly length: number
  readonly depth: number
  /** Some layer of the chain defines these bytes. */
  readonly present: boolean
  /** Reads as zeros. */
  readonly zero: boolean
  /** Backed by data in a file (not only a zero flag). */
  readonly data: boolean
  readonly compressed: boolean
  /** Host offset in the file holding the data (the data file for external data), when there is one. */
  readonly hostOffset?: number
  /** Name of the file that holds the data, when `hostOffset` is set. */
  readonly file?: string
}

/**
 * QEMU's heuristic for images made with preallocation=metadata: more
 * clusters have a refcount than the file really occupies (by at least a
 * ninth, and two clusters). Data clusters of such images are then reported
 * as zero where the file has holes. Decided once per open image.
 */
export class PreallocationProbe {
  private detected: boolean | undefined

  metadataPreallocated(engine: Qcow2Engine): Effect.Effect<boolean, EngineFailure> {
    if (this.detected !== undefined) return Effect.succeed(this.detected)
    const allocated = engine.storage.allocatedSize
    if (allocated === undefined) {
      this.detected = false
      return Effect.succeed(false)
    }
    const self = this
    return Effect.gen(function* () {
      const cs = engine.geometry.clusterSize
      const fileLength = yield* engine.storage.size()
      const realClusters = Math.floor((yield* allocated()) / cs)
      const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2)
      const endCluster = Math.ceil(fileLength / cs)
      // QEMU's block status takes a failed detection as "not preallocated";
      // damage found on the way is still a corruption event.
      const counted = yield* Effect.result(engine.refcounts.countReferenced(endCluster, threshold))
      if (counted._tag === "Failure" && isStructuralDamage(counted.failure)) {
        yield* Effect.ignore(engine.integrity.markCorrupt(counted.failure.message, counted.failure.offset))
      }
      self.detected = counted._tag === "Success" && counted.success >= threshold
      return self.detected
    })
  }
}

/**
 * Whether host bytes at `hostOffset` read as a hole, and how far that
 * stays true. Node has no SEEK_HOLE, so all-zero 4 KiB blocks stand in for
 * holes; bytes past the end of the file are a hole.
 */
export function holeStatus(storage: BlockStorageShape, hostOffset: number, length: number): Effect.Effect<{ zero: boolean; length: number }, StorageError> {
  return Effect.gen(function* () {
    const fileLength = yield* storage.size()
    if (hostOffset >= fileLength) return { zero: true, length }
    const window = new Uint8Array(Math.min(length, 2 * 1024 * 1024, fileLength - hostOffset))
    yield* storage.read(hostOffset, window)
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
}

/** Whether every byte is zero (word at a time when aligned). */
export function isZero(bytes: Uint8Array): boolean {
  if (bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4)
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false
    return true
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

/** Block status of the extent at guest `offset` (at most `length` bytes); the range is checked by the caller. */
export function blockStatus(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<BlockStatus, EngineFailure> {
  return Effect.gen(function* () {
    const mapping = lookupNow(engine, offset, Math.max(1, length)) ?? (yield* lookup(engine, offset, Math.max(1, length)))
    // Host offsets of encrypted data are not shown (QEMU hides them too).
    const hideOffset = engine.header.header.cryptMethod !== 0
    const file = engine.data.location
    switch (mapping.kind) {
      case "data": {
        let length = mapping.length
        let zero = false
        if (!hideOffset && !engine.externalData && (yield* engine.preallocation.metadataPreallocated(engine))) {
          // QEMU asks the file whether preallocated clusters hold data (BDRV_BLOCK_RECURSE).
          const hole = yield* holeStatus(engine.storage, mapping.hostOffset, length)
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
        const backing = engine.backing
        if (backing === undefined || offset >= backing.size) {
          // Nothing below (or past the end of a shorter backing file): zeros,
          // reported at this layer. An extended-L2 cluster keeps its host
          // offset even for subclusters not allocated yet, and QEMU shows it.
          return {
            offset, length: mapping.length, depth: 0, present: false, zero: true, data: false, compressed: false,
            ...(mapping.hostOffset !== undefined && !hideOffset && backing === undefined ? { hostOffset: mapping.hostOffset, file } : {})
          }
        }
        const below = yield* backing.blockStatus(offset, Math.min(mapping.length, backing.size - offset))
        return { ...below, depth: below.depth + 1 }
      }
    }
  })
}

/** True when guest bytes [offset, offset+length) read as zeros without looking at data. */
export function readsAsZero(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<boolean, EngineFailure> {
  return Effect.gen(function* () {
    let done = 0
    while (done < length) {
      const status = yield* blockStatus(engine, offset + done, length - done)
      if (!status.zero) return false
      done += status.length
    }
    return true
  })
}
