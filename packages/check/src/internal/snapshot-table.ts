import { Effect } from "effect"
import { Limits, SNAPSHOT_ENTRY_FIXED_SIZE, writeRefcount, writeRefcountTableEntry } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { type CheckAborted, EFBIG, EIO, ENOSPC, abort } from "./io.js"
import type { Pass } from "./pass.js"
import { UNREADABLE } from "./stored.js"

import type { SnapshotInfo } from "./state.js"

const TWO_32 = 2 ** 32
const ENTRY_HEADER = SNAPSHOT_ENTRY_FIXED_SIZE
const KNOWN_EXTRA = 24

/**
 * Encodes the snapshot table the way QEMU's qcow2_write_snapshots writes it:
 * at least 24 bytes of extra data per entry (vm_state_size_large,
 * disk_size, icount), missing fields filled in (disk size = current
 * virtual size, icount = -1), unknown extra data kept, entries 8-aligned.
 */
export function encodeSnapshotsLikeQemu(snapshots: ReadonlyArray<SnapshotInfo>, virtualSize: number): Uint8Array | undefined {
  let size = 0
  for (const s of snapshots) {
    size = Math.ceil(size / 8) * 8 + ENTRY_HEADER + Math.max(KNOWN_EXTRA, s.extraDataSize) + s.idBytes.length + s.nameBytes.length
    if (size > Limits.maxSnapshotTableBytes) return undefined
  }
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  let o = 0
  for (const s of snapshots) {
    o = Math.ceil(o / 8) * 8
    const h = new DataView(s.rawHeader.buffer, s.rawHeader.byteOffset, s.rawHeader.byteLength)
    const known = new DataView(s.knownExtra.buffer, s.knownExtra.byteOffset, s.knownExtra.byteLength)
    const extraSize = s.knownExtra.length
    const vmStateSize = extraSize >= 8 ? known.getUint32(0) * TWO_32 + known.getUint32(4) : h.getUint32(32)
    out.set(s.rawHeader.subarray(0, 32), o)
    view.setUint16(o + 12, s.idBytes.length)
    view.setUint16(o + 14, s.nameBytes.length)
    view.setUint32(o + 32, vmStateSize <= 0xffffffff ? vmStateSize : 0)
    view.setUint32(o + 36, Math.max(KNOWN_EXTRA, s.extraDataSize))
    o += ENTRY_HEADER
    view.setUint32(o, Math.floor(vmStateSize / TWO_32))
    view.setUint32(o + 4, vmStateSize >>> 0)
    if (extraSize >= 16) out.set(s.knownExtra.subarray(8, 16), o + 8)
    else {
      view.setUint32(o + 8, Math.floor(virtualSize / TWO_32))
      view.setUint32(o + 12, virtualSize >>> 0)
    }
    if (extraSize >= 24) out.set(s.knownExtra.subarray(16, 24), o + 16)
    else out.fill(0xff, o + 16, o + 24)
    o += KNOWN_EXTRA
    out.set(s.unknownExtra, o)
    o += s.unknownExtra.length
    out.set(s.idBytes, o)
    o += s.idBytes.length
    out.set(s.nameBytes, o)
    o += s.nameBytes.length
  }
  return out
}

/**
 * Allocates `count` contiguous clusters through the stored refcounts, as
 * QEMU's qcow2_alloc_clusters does from a free-cluster index of 0: first fit
 * among clusters with refcount 0, the refcounts raised to 1 and written. A
 * range not covered by a refcount block gets a new block in the first free
 * cluster after the range, describing itself, and the search restarts at
 * the range (QEMU's alloc_refcount_block and -EAGAIN); a block that could not
 * describe itself, or a refcount table without room, fails with ENOSPC.
 */
function allocateClusters(p: Pass, count: number): Effect.Effect<number, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const { img, stored } = p
    const bits = img.refblockBits
    const perBlock = 2 ** bits
    let next = 0
    for (;;) {
      let run = 0
      while (run < count) {
        const c = next++
        yield* stored.loadFor(c)
        const r = stored.get(c)
        if (r === UNREADABLE) return yield* abort(EIO)
        run = r === 0 ? run + 1 : 0
      }
      const start = next - count
      let uncovered = -1
      for (let c = start; c < start + count && uncovered < 0; c++) {
        if (stored.blockOffset(Math.floor(c / perBlock)) === 0) uncovered = c
      }
      if (uncovered < 0) {
        for (let c = start; c < start + count; c++) stored.set(c, 1)
        yield* stored.writeBack()
        return start * img.clusterSize
      }
      const blockIndex = Math.floor(uncovered / perBlock)
      let blockCluster = next
      for (;;) {
        yield* stored.loadFor(blockCluster)
        if (stored.get(blockCluster) === 0) break
        blockCluster++
      }
      if (Math.floor(blockCluster / perBlock) !== blockIndex || blockIndex >= img.reftableEntries) {
        return yield* abort(ENOSPC)
      }
      const block = new Uint8Array(img.clusterSize)
      writeRefcount(block, blockCluster - blockIndex * perBlock, img.refcountOrder, 1)
      yield* p.io.write(blockCluster * img.clusterSize, block)
      yield* p.io.flush()
      const entry = new Uint8Array(8)
      const offset = blockCluster * img.clusterSize
      writeRefcountTableEntry(entry, 0, offset)
      yield* p.io.write(img.reftableOffset + blockIndex * 8, entry)
      yield* p.io.flush()
      if (img.reftable.length < (blockIndex + 1) * 8) {
        const grown = new Uint8Array((blockIndex + 1) * 8)
        grown.set(img.reftable)
        img.reftable = grown
      }
      img.reftable.set(entry, blockIndex * 8)
      stored.reset()
      img.fileSize = Math.max(img.fileSize, offset + img.clusterSize)
      p.metadata.invalidate()
      // QEMU retries the same clusters first (update_refcount resets free_cluster_index on -EAGAIN).
      next = start
    }
  })
}

/**
 * Writes the snapshot table anew, completing entries QEMU considers broken
 * (QEMU's qcow2_check_fix_snapshot_table / qcow2_write_snapshots): the new
 * table goes into freshly allocated clusters, the header is switched to it
 * after a flush, then the old table's clusters are released.
 */
export function rewriteSnapshotTable(p: Pass): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const { img } = p
    const bytes = encodeSnapshotsLikeQemu(img.snapshots, img.virtualSize)
    if (bytes === undefined) return yield* abort(EFBIG)
    const cs = img.clusterSize
    const newOffset = yield* allocateClusters(p, Math.ceil(bytes.length / cs))
    yield* p.io.flush()
    if (p.metadata.find(newOffset, bytes.length, []) !== undefined) return yield* abort(EIO)
    yield* p.io.write(newOffset, bytes)
    yield* p.io.flush()
    const pointer = new Uint8Array(12)
    const view = new DataView(pointer.buffer)
    view.setUint32(0, img.snapshots.length)
    view.setUint32(4, Math.floor(newOffset / TWO_32))
    view.setUint32(8, newOffset >>> 0)
    yield* p.io.write(60, pointer)
    yield* p.io.flush()
    const oldOffset = img.snapshotsOffset
    const oldSize = img.snapshotsSize
    img.snapshotsOffset = newOffset
    img.snapshotsSize = bytes.length
    img.fileSize = Math.max(img.fileSize, newOffset + bytes.length)
    p.metadata.invalidate()
    // Only clusters inside the file can hold a refcount worth releasing.
    if (oldSize > 0 && oldOffset < img.fileSize) {
      const first = Math.floor(oldOffset / cs)
      const last = Math.floor((Math.min(oldOffset + oldSize, img.fileSize) - 1) / cs)
      const freed: Array<number> = []
      for (let c = first; c <= last; c++) {
        yield* p.stored.loadFor(c)
        const r = p.stored.get(c)
        if (r === UNREADABLE || r === 0) continue
        p.stored.set(c, r - 1)
        if (r === 1) freed.push(c)
      }
      yield* p.stored.writeBack()
      for (const c of freed) yield* p.io.discard(c * cs, cs)
    }
  })
}
