import { Effect } from "effect"
import { Limits, maxRefcount, readRefcount, readRefcountTableEntry, writeRefcount, writeRefcountTableEntry } from "@qcow2/format"
import type { ImageHeader } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import { ClusterError } from "./errors.js"
import { HeaderState } from "./header.js"

/** Progress of a long amend step: `done` of `total` units (QEMU's BlockDriverAmendStatusCB). */
export type AmendProgress = (done: number, total: number) => void

const corrupt = (message: string, offset?: number) => new ClusterError({ reason: "Corrupt", message, ...(offset !== undefined ? { offset } : {}) })

/**
 * Adds the non-zero entries of refcount block `raw` (whose first entry is
 * cluster `first`) to `counts`; all-zero bytes are skipped whole. A count
 * past 2^53 is kept as Number.MAX_VALUE (it fits no narrower width).
 */
function decodeNonZero(raw: Uint8Array, order: number, first: number, counts: Map<number, number>): void {
  const bytesPerEntry = order >= 3 ? 2 ** (order - 3) : 0
  const entriesPerByte = order < 3 ? 8 >> order : 0
  if (entriesPerByte > 0) {
    for (let i = 0; i < raw.length; i++) {
      if (raw[i] === 0) continue
      for (let k = 0; k < entriesPerByte; k++) {
        const e = i * entriesPerByte + k
        const count = readRefcount(raw, e, order)
        if (count !== 0) counts.set(first + e, count)
      }
    }
    return
  }
  for (let e = 0; e < raw.length / bytesPerEntry; e++) {
    let zero = true
    for (let j = e * bytesPerEntry; j < (e + 1) * bytesPerEntry && zero; j++) zero = raw[j] === 0
    if (zero) continue
    let count: number
    try {
      count = readRefcount(raw, e, order)
    } catch {
      count = Number.MAX_VALUE
    }
    counts.set(first + e, count)
  }
}

/**
 * Reports progress as QEMU's walks over the old refcount table do: one
 * walk per layout pass (the last finds nothing new to allocate; at least
 * two), then the walk that writes the new blocks, each step one table
 * entry, the expected number of walks growing as passes are added.
 */
function reportWalks(progress: AmendProgress, entries: number, passes: number): void {
  const walk = (index: number, total: number) => {
    for (let r = 0; r < entries; r++) progress(index * entries + r, total * entries)
    progress((index + 1) * entries, total * entries)
  }
  const allocationWalks = Math.max(passes, 2)
  for (let index = 0; index < allocationWalks; index++) walk(index, Math.max(index + 2, 3))
  walk(allocationWalks, allocationWalks + 1)
}

/**
 * Rewrites the refcount structures of a closed qcow2 image for a new
 * refcount width (`qemu-img amend -o refcount_bits=N`, QEMU's
 * qcow2_change_refcount_order), and returns the header written.
 *
 * Every old count is read first (a count that does not fit the new width
 * refuses the change with QEMU's message). The new refcount table and
 * blocks go past everything in use, sized for the new width; they count
 * the data as before plus themselves, and no longer the old table and
 * blocks. They are written and flushed before the header switches to them
 * in one sector write, so a crash leaves either the old structures or the
 * new ones in charge, never a mix; the old ones are then simply free
 * clusters.
 */
export function changeRefcountOrder(
  storage: BlockStorageShape,
  image: ImageHeader,
  newOrder: number,
  progress: AmendProgress = () => {}
): Effect.Effect<ImageHeader, ClusterError | StorageError> {
  return Effect.gen(function* () {
    const h = image.header
    const cs = 2 ** h.clusterBits
    const oldOrder = h.refcountOrder
    if (newOrder === oldOrder) return image
    const tableBytes = h.refcountTableClusters * cs
    if (tableBytes > Limits.maxRefcountTableBytes) return yield* corrupt(`Reference count table too large (${h.refcountTableClusters} clusters)`, 56)
    const table = new Uint8Array(tableBytes)
    yield* storage.read(h.refcountTableOffset, table)
    const fileSize = yield* storage.size()

    // 1. Every non-zero old count, in cluster order; the old table and blocks drop out.
    const oldEntries = cs * 8 / 2 ** oldOrder
    const counts = new Map<number, number>()
    const oldStructures: number[] = []
    for (let i = 0; i < table.length / 8; i++) {
      let offset: number
      try {
        offset = readRefcountTableEntry(table, i).offset
      } catch {
        return yield* corrupt(`Refblock offset of reftable index ${i} does not fit 2^53`, h.refcountTableOffset + i * 8)
      }
      if (offset === 0) continue
      if (offset % cs !== 0 || offset + cs > fileSize) return yield* corrupt(`Refblock offset 0x${offset.toString(16)} invalid (reftable index: 0x${i.toString(16)})`, h.refcountTableOffset + i * 8)
      const raw = new Uint8Array(cs)
      yield* storage.read(offset, raw)
      decodeNonZero(raw, oldOrder, i * oldEntries, counts)
      oldStructures.push(offset / cs)
    }
    for (let c = 0; c < h.refcountTableClusters; c++) oldStructures.push(h.refcountTableOffset / cs + c)
    for (const cluster of oldStructures) {
      const count = counts.get(cluster) ?? 0
      if (count === 0) return yield* corrupt(`Refcount structure at cluster ${cluster} is not counted`)
      if (count === 1) counts.delete(cluster)
      else counts.set(cluster, count - 1)
    }

    // 2. The counts must fit the new width (the first that does not is reported).
    const newMax = maxRefcount(newOrder)
    let lastUsed = 0
    for (const [cluster, count] of counts) {
      if (count > newMax) {
        const shown = count === Number.MAX_VALUE ? "more than 2^53" : String(count)
        return yield* new ClusterError({
          reason: "InvalidArgument",
          message: `Cannot decrease refcount entry width to ${2 ** newOrder} bits: Cluster at offset 0x${(cluster * cs).toString(16)} has a refcount of ${shown}`
        })
      }
      lastUsed = Math.max(lastUsed, cluster)
    }

    // 3. Where the new structures go: past everything in use and past the file end.
    const newEntries = cs * 8 / 2 ** newOrder
    const areaStart = Math.max(Math.ceil(fileSize / cs), lastUsed + 1)
    const usedBlocks = new Set<number>()
    for (const cluster of counts.keys()) usedBlocks.add(Math.floor(cluster / newEntries))
    let tableClusters = 1
    let newBlocks: number[] = []
    let walks = 0
    for (;;) {
      walks++
      const wanted = new Set(usedBlocks)
      const areaEnd = areaStart + tableClusters + newBlocks.length
      for (let b = Math.floor(areaStart / newEntries); b <= Math.floor((areaEnd - 1) / newEntries); b++) wanted.add(b)
      const sorted = [...wanted].sort((a, b) => a - b)
      const neededTable = Math.max(1, Math.ceil(((sorted[sorted.length - 1] ?? 0) + 1) * 8 / cs))
      if (sorted.length === newBlocks.length && neededTable === tableClusters) break
      newBlocks = sorted
      tableClusters = neededTable
    }
    if (tableClusters * cs > Limits.maxRefcountTableBytes) {
      return yield* new ClusterError({ reason: "Unsupported", message: "Failed to allocate the new reftable: the table would exceed the size limit" })
    }
    reportWalks(progress, table.length / 8, walks)
    const areaClusters = tableClusters + newBlocks.length
    const newTableOffset = areaStart * cs
    for (let c = areaStart; c < areaStart + areaClusters; c++) counts.set(c, 1)
    const newBlockBytes = new Map(newBlocks.map((b) => [b, new Uint8Array(cs)] as const))
    for (const [cluster, count] of counts) writeRefcount(newBlockBytes.get(Math.floor(cluster / newEntries))!, cluster % newEntries, newOrder, count)

    // 4. Write the new blocks and table, then switch the header.
    const newTable = new Uint8Array(tableClusters * cs)
    for (const [i, b] of newBlocks.entries()) {
      const offset = (areaStart + tableClusters + i) * cs
      yield* storage.write(offset, newBlockBytes.get(b)!)
      writeRefcountTableEntry(newTable, b, offset)
    }
    yield* storage.write(newTableOffset, newTable)
    yield* storage.flush()
    const header = new HeaderState(storage, image)
    yield* header.update({ refcountOrder: newOrder, refcountTableOffset: newTableOffset, refcountTableClusters: tableClusters })
    return header.image
  })
}
