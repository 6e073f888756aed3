import { Effect } from "effect"
import { readL2Entry, writeL2Entry } from "@qcow2/format"
import { ClusterError, forgetDecompressed, loadL2, prepareL2ForWrite, writeGuest } from "@qcow2/cluster"
import type { ClusterContext } from "@qcow2/cluster"

/**
 * Writes whole clusters compressed (spec "Compressed Clusters"; qemu-io
 * `write -c`). Each cluster is compressed with the image's compression
 * type; one that does not shrink is written as a normal cluster, as QEMU
 * does. Compressed data is packed at byte granularity. The range must be
 * cluster aligned (the last cluster may end at the image end), and the
 * clusters must not hold data yet (QEMU refuses to overwrite).
 */
export function writeCompressedCluster(ctx: ClusterContext, offset: number, data: Uint8Array): Effect.Effect<void, unknown> {
  return Effect.gen(function* () {
    const g = ctx.geometry
    const cs = g.clusterSize
    if (ctx.externalData) {
      return yield* new ClusterError({ reason: "Unsupported", message: "compressed writes are not possible with an external data file" })
    }
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== ctx.virtualSize)) {
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
        return ctx.compress(cluster)
      },
      { concurrency: "unbounded" }
    )
    for (let i = 0; i < starts.length; i++) {
      const done = starts[i]
      const guest = offset + done
      const compressed = results[i]
      if (compressed === undefined) {
        yield* writeGuest(ctx, guest, data.subarray(done, Math.min(done + cs, data.length)))
        continue
      }
      yield* ctx.lock.withPermits(1)(
        Effect.gen(function* () {
          const clusterIndex = guest / cs
          const waiting = ctx.inflight.overlapping(clusterIndex, clusterIndex)
          if (waiting !== undefined) {
            return yield* new ClusterError({ reason: "InvalidArgument", message: "a compressed write raced with another write to the same cluster", offset: guest })
          }
          const l2Offset = yield* prepareL2ForWrite(ctx, guest)
          const table = yield* loadL2(ctx, l2Offset)
          const index = clusterIndex % g.l2Entries
          const old = readL2Entry(table, index, g)
          const holdsData =
            old._tag === "Normal" ||
            old._tag === "Compressed" ||
            (old._tag === "Zero" && old.hostOffset !== 0) ||
            (old._tag === "Subclusters" && (old.hostOffset !== 0 || old.allocatedMask !== 0))
          if (old._tag === "Invalid") return yield* ctx.corrupt(`L2 entry for guest offset ${guest}: ${old.reason}`, guest)
          if (holdsData) {
            // QEMU: "Compression can't overwrite anything" (EIO).
            return yield* new ClusterError({
              reason: "InvalidArgument",
              message: `cannot write a compressed cluster over allocated data at guest offset ${guest}`,
              offset: guest,
              errno: "EIO"
            })
          }
          const host = yield* ctx.refcounts.allocateBytes(compressed.length)
          const overlap = ctx.overlapsMetadata(host, compressed.length)
          if (overlap !== undefined) return yield* ctx.corrupt(`compressed data at ${host} would overlap the ${overlap}`, host)
          yield* ctx.storage.write(host, compressed)
          if (!ctx.lazyRefcounts) yield* ctx.l2Cache.dependOn(ctx.refcounts.cache)
          const current = yield* loadL2(ctx, l2Offset)
          writeL2Entry(current, index, { _tag: "Compressed", hostOffset: host, compressedSize: compressed.length }, g)
          ctx.l2Cache.markDirty(l2Offset)
          ctx.l2Cache.dependOnStorageFlush()
          forgetDecompressed(ctx)
        })
      )
    }
  })
}
