import type { Pass } from "./pass.js"

/**
 * Counts one reference to every cluster that `[offset, offset + size)`
 * touches (QEMU's qcow2_inc_refcounts_imrt). A region reaching a cluster or
 * more past the end of the file is a corruption and is not counted; a count
 * already at the refcount maximum is an overflow corruption.
 * `offsetHex` gives the exact offset for messages when it may exceed 2^53.
 */
export function countRegion(p: Pass, offset: number, size: number, offsetHex?: string): void {
  if (size <= 0) return
  const cs = p.img.clusterSize
  if (size === cs && offset % cs === 0 && offset < p.img.fileSize) {
    // one whole cluster inside the file: the common case of data and tables
    if (!p.imrt.increment(offset / cs)) overflow(p, offset)
    return
  }
  if (offset + size - p.img.fileSize >= cs) {
    p.log(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offsetHex ?? offset.toString(16)} size 0x${size.toString(16)}`
    )
    p.tally.corruptions++
    return
  }
  const first = Math.floor(offset / cs)
  const last = Math.floor((offset + size - 1) / cs)
  for (let k = first; k <= last; k++) {
    if (!p.imrt.increment(k)) overflow(p, k * cs)
  }
}

function overflow(p: Pass, clusterOffset: number): void {
  p.log(`ERROR: overflow cluster offset=0x${clusterOffset.toString(16)}`)
  p.log(
    "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing"
  )
  p.tally.corruptions++
}
