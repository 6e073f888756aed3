import { Effect } from "effect"
import { debugPoint, type StorageError } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { COMPRESSED_SPAN_LIMIT, lookup, lookupNow, readCompressedCluster, readCompressedClusters, type CompressedPiece, type MappingRun } from "./mapping.js"

/**
 * The most recently decompressed cluster, for reads of compressed data in
 * pieces smaller than a cluster (sequential readers).
 */
export class DecompressedCluster {
  private hostOffset = -1
  private data: Uint8Array | undefined

  /** The decompressed bytes of the compressed cluster at `hostOffset`, if it is the one kept. */
  lookup(hostOffset: number): Uint8Array | undefined {
    return this.hostOffset === hostOffset ? this.data : undefined
  }

  remember(hostOffset: number, data: Uint8Array): void {
    this.hostOffset = hostOffset
    this.data = data
  }

  /** Its host bytes were freed or rewritten. */
  forget(): void {
    this.hostOffset = -1
    this.data = undefined
  }
}

/**
 * Reads guest bytes [offset, offset + into.length) of this layer, falling
 * through to the backing file for unallocated ranges (zeros past its end
 * or without one). Bytes past `end` (the virtual size; the VM state area
 * reads further) read as zeros.
 */
export function readGuest(engine: Qcow2Engine, offset: number, into: Uint8Array, end: number = engine.header.size): Effect.Effect<void, EngineFailure> {
  const inside = Math.max(0, Math.min(into.length, end - offset))
  if (inside < into.length) into.fill(0, inside)
  if (inside === 0) return Effect.void
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    let done = 0
    /** A run looked up ahead (past a batch of compressed clusters), handled next. */
    let next: MappingRun | undefined
    while (done < inside) {
      const run = next ?? lookupNow(engine, offset + done, inside - done) ?? (yield* lookup(engine, offset + done, inside - done))
      next = undefined
      const slice = into.subarray(done, done + run.length)
      switch (run.kind) {
        case "data":
          yield* debugPoint(engine.storage, "read_aio")
          yield* readData(engine, offset + done, run.hostOffset, slice)
          break
        case "zero":
          slice.fill(0)
          break
        case "unallocated":
          yield* readBacking(engine, offset + done, slice)
          break
        case "compressed": {
          if (run.offsetInCluster === 0 && run.length === cs) {
            // Whole clusters decompress straight into the caller's buffer;
            // the following ones packed next to this one on the host are read
            // with it, in one request.
            const pieces: Array<CompressedPiece> = [{ hostOffset: run.hostOffset, compressedSize: run.compressedSize, out: slice }]
            const start = run.hostOffset
            let end = start + run.compressedSize
            let covered = done + cs
            while (covered < inside) {
              const ahead = lookupNow(engine, offset + covered, inside - covered) ?? (yield* lookup(engine, offset + covered, inside - covered))
              const packed =
                ahead.kind === "compressed" &&
                ahead.offsetInCluster === 0 &&
                ahead.length === cs &&
                ahead.hostOffset >= start &&
                ahead.hostOffset <= end + 4096 &&
                ahead.hostOffset + ahead.compressedSize - start <= COMPRESSED_SPAN_LIMIT
              if (!packed) {
                next = ahead
                break
              }
              pieces.push({ hostOffset: ahead.hostOffset, compressedSize: ahead.compressedSize, out: into.subarray(covered, covered + cs) })
              end = Math.max(end, ahead.hostOffset + ahead.compressedSize)
              covered += cs
            }
            yield* readCompressedClusters(engine, pieces, start, end)
            done = covered
            continue
          }
          let cluster = engine.decompressed.lookup(run.hostOffset)
          if (cluster === undefined) {
            cluster = new Uint8Array(engine.geometry.clusterSize)
            yield* readCompressedCluster(engine, run.hostOffset, run.compressedSize, cluster)
            engine.decompressed.remember(run.hostOffset, cluster)
          }
          slice.set(cluster.subarray(run.offsetInCluster, run.offsetInCluster + run.length))
          break
        }
      }
      done += run.length
    }
  })
}

/** Reads guest bytes from the backing file; zeros past its end or without one. */
export function readBacking(engine: Qcow2Engine, offset: number, into: Uint8Array): Effect.Effect<void, EngineFailure> {
  const backing = engine.backing
  if (backing === undefined) {
    into.fill(0)
    return Effect.void
  }
  const available = Math.max(0, Math.min(into.length, backing.size - offset))
  if (available < into.length) into.fill(0, available)
  if (available === 0) return Effect.void
  return Effect.andThen(debugPoint(engine.storage, "read_backing_aio"), backing.read(offset, available === into.length ? into : into.subarray(0, available)))
}

/**
 * Reads data-cluster bytes, decrypting when the image is encrypted. Encrypted
 * data is handled in whole 512-byte sectors, so unaligned reads go through
 * a bounce buffer.
 */
export function readData(engine: Qcow2Engine, guestOffset: number, hostOffset: number, into: Uint8Array): Effect.Effect<void, StorageError> {
  const crypto = engine.crypto
  if (crypto === undefined) return engine.data.read(hostOffset, into)
  const head = hostOffset % 512
  const alignedHost = hostOffset - head
  const alignedLength = Math.ceil((head + into.length) / 512) * 512
  const aligned = head === 0 && alignedLength === into.length ? into : new Uint8Array(alignedLength)
  return Effect.map(engine.data.read(alignedHost, aligned), () => {
    crypto.decrypt(crypto.ivFrom === "host" ? alignedHost : guestOffset - head, aligned)
    if (aligned !== into) into.set(aligned.subarray(head, head + into.length))
  })
}
