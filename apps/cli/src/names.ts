/**
 * File names as QEMU prints them. QEMU combines a backing file name with the
 * directory of the image that names it textually (block.c path_combine):
 * "sub/t.qcow2" + "../b.qcow2" gives "sub/../b.qcow2", not a normalized
 * path; qemu-img info shows that as "full-backing-filename".
 */

/** True for URLs the HTTP backend opens. */
export const isUrl = (name: string): boolean => /^https?:\/\//i.test(name)

/** The name QEMU shows for backing file `name` referenced from image `base` (moved to @qcow2/image with the info data). */
export { pathCombine } from "@qcow2/image"
