import { persistentBitmapsSize } from "@qcow2/format"
import type { Image } from "./api.js"

/**
 * Bytes the persistent bitmaps of `image` need in a new qcow2 image of
 * `clusterSize` (the "bitmaps size" of qemu-img measure, QEMU's
 * qcow2_get_persistent_dirty_bitmap_size): every bitmap, in use or not,
 * counted fully dirty. 0 for an image without bitmaps.
 */
export function persistentBitmapsSizeOf(image: Image, clusterSize: number): number {
  const bitmaps = image.bitmaps?.list() ?? []
  return persistentBitmapsSize(
    bitmaps.map((b) => ({ name: b.name, granularity: b.granularity, size: image.virtualSize })),
    clusterSize
  )
}
