import { Effect } from "effect"
import { readL2Entry, writeL2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { prepareL2ForWrite } from "./l2.js"
import { l2Coverage, loadL2 } from "./mapping.js"

/**
 * Gives every unallocated guest cluster in [offset, offset + length) a host
 * cluster without writing data (qemu-img create -o preallocation=metadata):
 * L2 tables first, then runs of contiguous data clusters linked as normal,
 * COPIED clusters. With an external data file the host offset is the guest
 * offset. Returns the end of the last host cluster allocated.
 */
export function preallocateClusters(engine: Qcow2Engine, offset: number, length: number): Effect.Effect<number, EngineFailure> {
  return engine.lock.withPermits(1)(
    Effect.gen(function* () {
      const g = engine.geometry
      const cs = g.clusterSize
      const coverage = l2Coverage(engine)
      const end = offset + length
      let hostEnd = 0
      for (let position = Math.floor(offset / cs) * cs; position < end; ) {
        const tableEnd = Math.min(end, (Math.floor(position / coverage) + 1) * coverage)
        const l2Offset = yield* prepareL2ForWrite(engine, position)
        hostEnd = Math.max(hostEnd, l2Offset + cs)
        const firstCluster = Math.floor(position / cs)
        const lastCluster = Math.floor((tableEnd - 1) / cs)
        let cluster = firstCluster
        while (cluster <= lastCluster) {
          const table = yield* loadL2(engine, l2Offset)
          const entry = readL2Entry(table, cluster % g.l2Entries, g)
          const unallocated = entry._tag === "Unallocated" || (entry._tag === "Subclusters" && entry.hostOffset === 0 && !entry.copied)
          if (!unallocated) {
            cluster++
            continue
          }
          let run = 1
          while (cluster + run <= lastCluster) {
            const next = readL2Entry(table, (cluster + run) % g.l2Entries, g)
            if (!(next._tag === "Unallocated" || (next._tag === "Subclusters" && next.hostOffset === 0 && !next.copied))) break
            run++
          }
          const host = engine.externalData ? cluster * cs : yield* engine.refcounts.allocate(run)
          if (!engine.externalData) yield* engine.integrity.guardWrite(host, run * cs)
          const again = yield* loadL2(engine, l2Offset)
          for (let i = 0; i < run; i++) {
            const index = (cluster + i) % g.l2Entries
            if (g.extendedL2) {
              writeL2Entry(again, index, { _tag: "Subclusters", hostOffset: host + i * cs, copied: true, allocatedMask: 0xffffffff, zeroMask: 0 }, g)
            } else {
              writeL2Entry(again, index, { _tag: "Normal", hostOffset: host + i * cs, copied: true }, g)
            }
          }
          engine.l2Cache.markDirty(l2Offset)
          hostEnd = Math.max(hostEnd, host + run * cs)
          cluster += run
        }
        position = tableEnd
      }
      return hostEnd
    })
  )
}
