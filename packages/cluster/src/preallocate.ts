import { Effect } from "effect"
import { readL2EntryForIo, writeL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"
import type { EngineFailure } from "./errors.js"
import { prepareL2ForWrite } from "./l2.js"
import { l2Coverage, loadL2 } from "./mapping.js"

/** How the file is grown over preallocated clusters: sparse (metadata, falloc) or written with zeros (full). */
export type FileFill = "sparse" | "zeros"

/**
 * Grows `storage` to at least `end` bytes: sparse, or by writing zeros
 * from its current end (preallocation=full).
 */
export function growFile(storage: BlockStorageShape, end: number, fill: FileFill): Effect.Effect<void, StorageError> {
  return Effect.gen(function* () {
    const current = yield* storage.size()
    if (end <= current) return
    if (fill === "sparse") return yield* storage.resize(end)
    const zeros = new Uint8Array(Math.min(1 << 20, end - current))
    for (let p = current; p < end; p += zeros.length) yield* storage.write(p, zeros.subarray(0, Math.min(zeros.length, end - p)))
  })
}

/**
 * What preallocated clusters read as (extended L2 bitmaps; without extended
 * L2 every preallocated cluster is a normal data cluster):
 * - "kept": the bitmap stays as it was, so unallocated subclusters still
 *   read the backing file or zeros (QEMU's preallocation links its clusters
 *   with QCowL2Meta.prealloc set, which leaves the bitmap alone);
 * - "zeros": every subcluster allocated, and the clusters hold zeros (QEMU's
 *   falloc/full truncate over a backing file that would show through, where
 *   the grown file provides the zeros).
 */
export type PreallocatedContent = "kept" | "zeros"

/**
 * Gives every unallocated guest cluster in [offset, offset + length) a host
 * cluster (qemu-img create/resize -o preallocation): L2 tables first, then
 * runs of contiguous clusters linked as COPIED clusters, their content as
 * `content` says. The file grows over each run before the entries that
 * name it exist, so no entry ever points past the end of the file, even
 * after a crash; with "zeros", space reused inside the file is zeroed
 * first. With an external data file the host offset is the guest offset
 * (the caller grows the data file). Returns where the file must end at
 * least: past the last L2 table and host cluster allocated (see fileEnd).
 */
export function preallocateClusters(
  engine: Qcow2Engine,
  offset: number,
  length: number,
  fill: FileFill,
  content: PreallocatedContent
): Effect.Effect<number, EngineFailure> {
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
          if (!withoutHost(readL2EntryForIo(table, cluster % g.l2Entries, g))) {
            cluster++
            continue
          }
          let run = 1
          while (cluster + run <= lastCluster && withoutHost(readL2EntryForIo(table, (cluster + run) % g.l2Entries, g))) run++
          const host = engine.externalData ? cluster * cs : yield* engine.refcounts.allocate(run)
          // A sparse file ends at the subcluster holding the last guest byte when
          // this run ends the range (QEMU's metadata preallocation writes its
          // copy-on-write tail there and no further); otherwise at the run's end.
          const guestRunEnd = (cluster + run) * cs
          const fileEnd = fill === "sparse" && guestRunEnd > end ? host + run * cs - (guestRunEnd - Math.ceil(end / g.subclusterSize) * g.subclusterSize) : host + run * cs
          if (!engine.externalData) {
            yield* engine.integrity.guardWrite(host, run * cs)
            if (content === "zeros") yield* zeroReused(engine.storage, host, run * cs)
            yield* growFile(engine.storage, fileEnd, fill)
          }
          const again = yield* loadL2(engine, l2Offset)
          for (let i = 0; i < run; i++) {
            const index = (cluster + i) % g.l2Entries
            const hostOffset = host + i * cs
            if (!g.extendedL2) {
              writeL2Entry(again, index, { _tag: "Normal", hostOffset, copied: true }, g)
            } else if (content === "zeros") {
              writeL2Entry(again, index, { _tag: "Subclusters", hostOffset, copied: true, allocatedMask: 0xffffffff, zeroMask: 0 }, g)
            } else {
              // No subcluster is allocated without a host cluster; zero bits stay.
              const old = readL2EntryForIo(again, index, g)
              const zeroMask = old._tag === "Subclusters" ? old.zeroMask : 0
              writeL2Entry(again, index, { _tag: "Subclusters", hostOffset, copied: true, allocatedMask: 0, zeroMask }, g)
            }
          }
          engine.l2Cache.markDirty(l2Offset)
          hostEnd = Math.max(hostEnd, fileEnd)
          cluster += run
        }
        position = tableEnd
      }
      return hostEnd
    })
  )
}

/** An entry with no host cluster behind it (what preallocation fills in). */
const withoutHost = (entry: L2Entry): boolean =>
  entry._tag === "Unallocated" || (entry._tag === "Subclusters" && entry.hostOffset === 0 && !entry.copied)

/** Writes zeros over the part of host bytes [offset, offset + length) that lies inside the file already (freed clusters reused). */
function zeroReused(storage: BlockStorageShape, offset: number, length: number): Effect.Effect<void, StorageError> {
  return Effect.gen(function* () {
    const end = Math.min(offset + length, yield* storage.size())
    if (end <= offset) return
    const zeros = new Uint8Array(Math.min(1 << 20, end - offset))
    for (let p = offset; p < end; p += zeros.length) yield* storage.write(p, zeros.subarray(0, Math.min(zeros.length, end - p)))
  })
}
