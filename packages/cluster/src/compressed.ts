import { Effect } from "effect"
import { readL2Entry, writeL2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { hasHostData, prepareL2ForWrite } from "./l2.js"
import { loadL2 } from "./mapping.js"
import { writeGuest } from "./write.js"

/**
 * Writes whole clusters compressed (spec "Compressed Clusters"; qemu-io
 * `write -c`). Each cluster is compressed with the image's compression
 * type; one that does not shrink is written as a normal cluster, as QEMU
 * does. Compressed data is packed at byte granularity. The range must be
 * cluster aligned (the last cluster may end at the image end), and the
 * clusters must not hold data yet (QEMU: "Compression can't overwrite
 * anything", EIO).
 */
export function writeCompressedClusters(engine: Qcow2Engine, offset: number, data: Uint8Array): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    if (engine.externalData) {
      return yield* new ClusterError({ reason: "Unsupported", message: "compressed writes are not possible with an external data file" })
    }
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== engine.header.size)) {
      return yield* new ClusterError({
        reason: "InvalidArgument",
        message: `compressed writes must cover whole clusters (${cs} bytes) at cluster-aligned offsets`,
        offset,
        errno: "EINVAL"
      })
    }
    // Compress every cluster of the request at once (a worker pool runs them
    // in parallel), then store them in guest order.
    const starts: number[] = []
    for (let done = 0; done < data.length; done += cs) starts.push(done)
    const results = yield* Effect.forEach(
      starts,
      (done) => {
        let cluster = data.subarray(done, Math.min(done + cs, data.length))
        if (cluster.length < cs) {
          const padded = new Uint8Array(cs)
          padded.set(cluster)
          cluster = padded
        }
        return engine.codec.compress(cluster)
      },
      { concurrency: "unbounded" }
    )
    for (let i = 0; i < starts.length; i++) {
      const guest = offset + starts[i]
      const compressed = results[i]
      if (compressed === undefined) {
        yield* writeGuest(engine, guest, data.subarray(starts[i], Math.min(starts[i] + cs, data.length)))
        continue
      }
      const clusterIndex = guest / cs
      yield* engine.inflight.whenSettled(engine.lock, clusterIndex, clusterIndex, storeCompressed(engine, guest, compressed))
    }
  })
}

/** Stores one compressed cluster and links it. Call with the lock held. */
function storeCompressed(engine: Qcow2Engine, guest: number, compressed: Uint8Array): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const refused = engine.integrity.refuseWrite(guest)
    if (refused !== undefined) return yield* refused
    const g = engine.geometry
    const l2Offset = yield* prepareL2ForWrite(engine, guest)
    const index = (guest / g.clusterSize) % g.l2Entries
    const old = readL2Entry(yield* loadL2(engine, l2Offset), index, g)
    if (old._tag === "Invalid") return yield* engine.integrity.markCorrupt(`L2 entry for guest offset ${guest}: ${old.reason}`, guest)
    if (hasHostData(engine, old) || (old._tag === "Subclusters" && old.allocatedMask !== 0)) {
      return yield* new ClusterError({
        reason: "InvalidArgument",
        message: `cannot write a compressed cluster over allocated data at guest offset ${guest}`,
        offset: guest,
        errno: "EIO"
      })
    }
    const host = yield* engine.refcounts.allocateBytes(compressed.length)
    yield* engine.integrity.guardWrite(host, compressed.length)
    engine.storage.debugEvent?.("write_compressed")
    yield* engine.storage.write(host, compressed)
    const table = yield* loadL2(engine, l2Offset)
    writeL2Entry(table, index, { _tag: "Compressed", hostOffset: host, compressedSize: compressed.length }, g)
    engine.l2Cache.markDirty(l2Offset)
    // Rule 2: the compressed bytes are durable before the entry.
    engine.l2Cache.dependOnStorageFlush()
    engine.decompressed.forget()
  })
}
