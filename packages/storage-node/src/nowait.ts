/**
 * Reads served from the page cache on the calling thread: preadv2(2) with
 * RWF_NOWAIT, which copies what is cached and fails with EAGAIN instead of
 * waiting for the disk. A small read that hits the cache then costs one
 * system call instead of a round trip through libuv's thread pool (two
 * thread wake-ups, the larger part of a 4 KiB read's cost, and most of it
 * on a busy machine); a miss, or the part of a read that is not cached,
 * goes to the thread pool as before, so the event loop never waits for the
 * disk. Linux has had RWF_NOWAIT for buffered reads since 4.14.
 *
 * Writes cannot ask the same (ext4 and most file systems refuse buffered
 * RWF_NOWAIT writes with EOPNOTSUPP); a small write of whole pages is done
 * on the loop's thread by NodeFileStorage instead, which only needs the
 * page size from here (a write of whole pages never reads the disk to fill
 * the rest of a page) and steps back to the pool when one such write had to
 * wait.
 *
 * preadv2 is called through koffi (libc.ts), bound once per process;
 * where it cannot be had (not Linux x64/arm64, koffi missing, no preadv2
 * in libc) every read goes to the thread pool.
 */
import { onceWithLibc } from "./libc.js"

const RWF_NOWAIT = 0x8
const EAGAIN = 11

/** Reads the cached prefix of a range; answers bytes read (0 at end of file), or -1 when nothing could be read now. */
export interface NowaitRead {
  (fd: number, into: Uint8Array, offset: number): number
}

/** What a failed call means for the next ones on the same file. */
export interface NowaitBinding {
  readonly read: NowaitRead
  /** The errno of the last failed call: EAGAIN (not cached) or a reason to stop trying on this file. */
  readonly lastErrorWasMiss: () => boolean
  /** The kernel's page size (getpagesize(2)): the unit of the page cache. */
  readonly pageSize: number
}

const bindNowait = onceWithLibc((c): NowaitBinding => {
  const preadv2 = c.func("long preadv2(int fd, void *iov, int iovcnt, int64_t offset, int flags)")
  const pageSize = Number(c.func("int getpagesize(void)")())
  // One struct iovec { void *iov_base; size_t iov_len; } (LP64, little-endian), refilled per call.
  const iovec = new Uint8Array(16)
  const view = new DataView(iovec.buffer)
  const read: NowaitRead = (fd, into, offset) => {
    view.setBigUint64(0, c.address(into), true)
    view.setBigUint64(8, BigInt(into.length), true)
    const n = Number(preadv2(fd, iovec, 1, offset, RWF_NOWAIT))
    return n >= 0 ? n : -1
  }
  return { read, lastErrorWasMiss: () => c.errno() === EAGAIN, pageSize }
})

/** The preadv2 binding, loaded once per process; undefined where it cannot be had. */
export const nowaitBinding: () => Promise<NowaitBinding | undefined> = bindNowait
