/**
 * File names as QEMU prints them. QEMU combines a backing file name with the
 * directory of the image that names it textually (block.c path_combine):
 * "sub/t.qcow2" + "../b.qcow2" gives "sub/../b.qcow2", not a normalized
 * path; qemu-img info shows that as "full-backing-filename".
 */

/** QEMU's path_has_protocol: a ':' before any '/'. */
const hasProtocol = (name: string): boolean => /^[^:/]*:/.test(name)

/** True for URLs the HTTP backend opens. */
export const isUrl = (name: string): boolean => /^https?:\/\//i.test(name)

/** The name QEMU shows for backing file `name` referenced from image `base`. */
export const pathCombine = (base: string, name: string): string => {
  if (name === "" || name.startsWith("/") || hasProtocol(name)) return name
  const protocolEnd = hasProtocol(base) ? base.indexOf(":") + 1 : 0
  const slash = base.lastIndexOf("/")
  const cut = Math.max(protocolEnd, slash + 1)
  return base.slice(0, cut) + name
}
