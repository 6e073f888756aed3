/**
 * lseek(2) with SEEK_DATA / SEEK_HOLE, as QEMU's file driver uses it for
 * block status (block/file-posix.c find_allocation): a raw image's holes
 * read as zeros without reading them. Node has no binding for these
 * whence values; lseek is called through koffi (libc.ts), as for the image
 * locks. Where it cannot be had (not Linux on
 * x64/arm64, koffi missing) the file is reported as data from end to end,
 * what lseek itself answers on file systems without hole support.
 */
import { onceWithLibc } from "./libc.js"

const SEEK_DATA = 3
const SEEK_HOLE = 4
const ENXIO = 6

/** lseek(fd, offset, whence): the resulting offset, or -errno. */
export type Lseek = (fd: number, offset: number, whence: number) => number

/** The lseek binding, loaded once per process; undefined where it cannot be had. */
export const lseekBinding: () => Promise<Lseek | undefined> = onceWithLibc((c): Lseek => {
  const lseek = c.func("int64_t lseek(int fd, int64_t offset, int whence)")
  return (fd, offset, whence) => {
    const r = Number(lseek(fd, offset, whence))
    return r < 0 ? -c.errno() : r
  }
})

/**
 * Where the first data (`what` "data") or hole ("hole") at or after
 * `offset` begins in the file `fd` of `size` bytes: `size` when there is
 * none (the end of a file counts as a hole), `offset` itself when the
 * answer is unknown for "data" (everything is data), `size` for "hole".
 * Other errors than ENXIO are reported as -errno. Synchronous, on the
 * caller's thread (as lseek always was here).
 */
export const seekExtent = (lseek: Lseek | undefined, fd: number, offset: number, size: number, what: "data" | "hole"): number => {
  if (lseek === undefined || offset >= size) return what === "data" ? Math.min(offset, size) : size
  const r = lseek(fd, offset, what === "data" ? SEEK_DATA : SEEK_HOLE)
  if (r === -ENXIO) return size
  return r < 0 ? r : Math.min(r, size)
}
