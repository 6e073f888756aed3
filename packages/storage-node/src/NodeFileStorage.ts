import * as fs from "node:fs"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import {
  BlockStorage,
  checkRange,
  checkSize,
  closedError,
  readOnlyError,
  StorageError,
  writeNowFor
} from "@qcow2/storage"
import type { BlockStorageShape, LockRequest, OpenOptions } from "@qcow2/storage"
import { fromSystemError } from "./errors.js"
import { FileLocks } from "./lock.js"
import { lseekBinding, seekExtent } from "./seek.js"
import type { Lseek } from "./seek.js"
import { nowaitBinding } from "./nowait.js"
import type { NowaitBinding } from "./nowait.js"
import { punchBinding, zeroFill } from "./punch.js"
import type { PunchHole } from "./punch.js"

/**
 * Largest single read/write handed to Node (its limit is 2^31 - 1 bytes);
 * bigger requests are split by the loops below.
 */
const MAX_IO = 1 << 30

/**
 * Largest read tried from the page cache on the event loop's thread
 * (nowait.ts): past this the copy costs about what the thread pool's round
 * trip does, and big copies belong on the pool's threads, beside the loop.
 */
const NOWAIT_MAX = 128 * 1024

/**
 * Small writes of whole pages are done on the event loop's thread
 * (`NodeFile.writeNow`): a buffered write that finds room in the page
 * cache is one system call of a few microseconds, where the thread pool's
 * round trip (two thread wake-ups) costs 30–40 µs, and more on a busy
 * machine. Whole pages, so that the kernel never reads the disk to fill
 * the rest of a page. A write can still wait (the kernel throttles a
 * writer that dirties pages faster than the disk takes them; the journal
 * is committing): the writes that took longer than SLOW_WRITE_MS are
 * summed per WAIT_WINDOW_MS, and once that sum passes WAIT_BUDGET_MS the
 * file's writes go to the pool until the next window, so the loop spends
 * at most about a fifth of its time waiting in writes. The kernel's
 * throttling pauses a writer for 10 ms or more at a time; a write that
 * took a few milliseconds because the thread was preempted on a busy
 * machine (measured here: one in a thousand, at a load of 13 on 2 cores)
 * does not count.
 */
const WRITE_NOW_MAX = 128 * 1024
const SLOW_WRITE_MS = 10
const WAIT_WINDOW_MS = 1000
const WAIT_BUDGET_MS = 200

type Resume<A> = (effect: Effect.Effect<A, StorageError>) => void

/**
 * Open flags for {@link OpenOptions}: never O_APPEND (positional writes).
 * Always O_NONBLOCK, so that opening never waits: a FIFO without a writer
 * would block a read-only open(2) forever (and with it the scope that
 * acquires the file, which cannot be interrupted). The file type is
 * checked right after; on the regular files and block devices accepted
 * O_NONBLOCK changes nothing.
 */
const openFlags = (options: OpenOptions): number => {
  const { O_CREAT, O_NONBLOCK, O_RDONLY, O_RDWR, O_TRUNC } = fs.constants
  return (options.readOnly ? O_RDONLY : O_RDWR) |
    O_NONBLOCK |
    (options.create === true ? O_CREAT : 0) |
    (options.truncate === true ? O_TRUNC : 0)
}

/**
 * Why a file of this type cannot be an image, or undefined if it can.
 * Like QEMU: regular files and block devices hold images, and character
 * devices are accepted as QEMU's host_device driver accepts them (/dev/null
 * reads as an empty raw image); a FIFO, a directory or anything else is
 * refused with QEMU's message ('file' driver requires … to be a regular
 * file). A socket never gets here: open(2) fails with ENXIO.
 */
export const unsupportedFileType = (path: string, stats: fs.Stats): StorageError | undefined =>
  stats.isFile() || stats.isBlockDevice() || stats.isCharacterDevice()
    ? undefined
    : new StorageError({ reason: "Unsupported", message: `'file' driver requires '${path}' to be a regular file`, location: path })

/** An open descriptor and whether it is a regular file. */
interface OpenedFd {
  readonly fd: number
  readonly regular: boolean
}

const openFd = (path: string, options: OpenOptions): Effect.Effect<OpenedFd, StorageError> =>
  Effect.callback<OpenedFd, StorageError>((resume) => {
    fs.open(path, openFlags(options), (openError, fd) => {
      if (openError !== null) {
        resume(Effect.fail(fromSystemError(openError, "open", path)))
        return
      }
      fs.fstat(fd, (statError, stats) => {
        const refused = statError !== null ? fromSystemError(statError, "open", path) : unsupportedFileType(path, stats)
        if (refused !== undefined) fs.close(fd, () => resume(Effect.fail(refused)))
        else resume(Effect.succeed({ fd, regular: stats.isFile() }))
      })
    })
  })

const closeFd = (fd: number): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    fs.close(fd, () => resume(Effect.void))
  })

/**
 * One open file. Every operation counts itself in `inflight` while the
 * kernel works on it; closing waits for them, so the descriptor number
 * cannot be reused under a running request. Operations that start after
 * the scope closed fail with reason `Closed`.
 */
class NodeFile {
  inflight = 0
  closed = false
  onDrained: (() => void) | undefined = undefined
  /** QEMU-compatible image locks of this descriptor, released when it closes. */
  readonly locks: FileLocks
  /** The page size when small writes may be done on this thread (a regular file, the libc binding at hand); 0 otherwise. */
  private readonly writeNowPage: number
  /** Start (performance.now()) of the current window of WAIT_WINDOW_MS, and the time slow writes on this thread took in it. */
  private waitWindow = 0
  private waited = 0

  constructor(
    readonly fd: number,
    readonly location: string,
    /** Page-cache reads on this thread (nowait.ts); dropped when the file refuses them. */
    private nowait: NowaitBinding | undefined,
    regular: boolean,
    /** Hole punching (punch.ts); undefined where it cannot be had, and discard does nothing. */
    readonly punch: PunchHole | undefined,
    /** lseek for SEEK_DATA/SEEK_HOLE (seek.ts); undefined where it cannot be had, and the file is all data. */
    private readonly lseek: Lseek | undefined
  ) {
    this.locks = new FileLocks(fd, location)
    this.writeNowPage = regular && nowait !== undefined ? nowait.pageSize : 0
  }

  /**
   * Reads what the page cache holds of the start of [offset, +into.length)
   * without waiting for the disk; answers the bytes read (0 when nothing
   * was cached or there is no binding). The rest is the thread pool's.
   */
  readCached(offset: number, into: Uint8Array): number {
    const nowait = this.nowait
    if (nowait === undefined || this.closed || into.length === 0 || into.length > NOWAIT_MAX) return 0
    const n = nowait.read(this.fd, into, offset)
    if (n < 0 && !nowait.lastErrorWasMiss()) this.nowait = undefined
    return n > 0 ? n : 0
  }

  /**
   * Writes `data` on this thread when it is whole pages of at most
   * WRITE_NOW_MAX bytes and no write has waited lately (see WRITE_NOW_MAX):
   * answers the bytes written (0: nothing, the pool's job), or the error.
   */
  writeNow(offset: number, data: Uint8Array): number | StorageError {
    const page = this.writeNowPage
    if (page === 0 || this.closed || data.length === 0 || data.length > WRITE_NOW_MAX || offset % page !== 0 || data.length % page !== 0) return 0
    const start = performance.now()
    if (start - this.waitWindow >= WAIT_WINDOW_MS) {
      this.waitWindow = start
      this.waited = 0
    } else if (this.waited > WAIT_BUDGET_MS) {
      return 0
    }
    let done = 0
    try {
      while (done < data.length) {
        const n = fs.writeSync(this.fd, data, done, data.length - done, offset + done)
        if (n === 0) break
        done += n
      }
    } catch (error) {
      return fromSystemError(error, "write", this.location, offset, data.length)
    }
    const took = performance.now() - start
    if (took > SLOW_WRITE_MS) this.waited += took
    return done
  }

  begin<A>(operation: string, resume: Resume<A>): boolean {
    if (this.closed) {
      resume(Effect.fail(closedError(this.location, operation)))
      return false
    }
    this.inflight++
    return true
  }

  end<A>(resume: Resume<A>, result: Effect.Effect<A, StorageError>): void {
    this.inflight--
    if (this.inflight === 0 && this.onDrained !== undefined) this.onDrained()
    resume(result)
  }

  /** Positional read of all of `into` from byte `start` on, looping on short reads; zero-fills past EOF. */
  read(offset: number, into: Uint8Array, resume: Resume<void>, start = 0): void {
    if (!this.begin("read", resume)) return
    let done = start
    const step = (): void => {
      fs.read(this.fd, into, done, Math.min(into.length - done, MAX_IO), offset + done, onRead)
    }
    const onRead = (error: NodeJS.ErrnoException | null, bytesRead: number): void => {
      if (error !== null) {
        this.end(resume, Effect.fail(fromSystemError(error, "read", this.location, offset, into.length)))
        return
      }
      if (bytesRead === 0) {
        into.fill(0, done)
        done = into.length
      } else {
        done += bytesRead
      }
      if (done < into.length) step()
      else this.end(resume, Effect.void)
    }
    if (done === into.length) this.end(resume, Effect.void)
    else step()
  }

  /** Positional write of all of `data` from byte `start` on, looping on short writes. */
  write(offset: number, data: Uint8Array, resume: Resume<void>, start = 0): void {
    if (!this.begin("write", resume)) return
    let done = start
    const step = (): void => {
      fs.write(this.fd, data, done, Math.min(data.length - done, MAX_IO), offset + done, onWrite)
    }
    const onWrite = (error: NodeJS.ErrnoException | null, written: number): void => {
      if (error !== null) {
        this.end(resume, Effect.fail(fromSystemError(error, "write", this.location, offset, data.length)))
        return
      }
      done += written
      if (done < data.length) step()
      else this.end(resume, Effect.void)
    }
    if (done === data.length) this.end(resume, Effect.void)
    else step()
  }

  flush(resume: Resume<void>): void {
    if (!this.begin("flush", resume)) return
    fs.fdatasync(this.fd, (error) => {
      this.end(resume, error === null ? Effect.void : Effect.fail(fromSystemError(error, "flush", this.location)))
    })
  }

  size(resume: Resume<number>): void {
    if (!this.begin("size", resume)) return
    fs.fstat(this.fd, (error, stats) => {
      this.end(resume, error === null ? Effect.succeed(stats.size) : Effect.fail(fromSystemError(error, "size", this.location)))
    })
  }

  allocatedSize(resume: Resume<number>): void {
    if (!this.begin("size", resume)) return
    fs.fstat(this.fd, (error, stats) => {
      this.end(resume, error === null ? Effect.succeed(stats.blocks * 512) : Effect.fail(fromSystemError(error, "size", this.location)))
    })
  }

  resize(size: number, resume: Resume<void>): void {
    if (!this.begin("resize", resume)) return
    fs.ftruncate(this.fd, size, (error) => {
      this.end(resume, error === null ? Effect.void : Effect.fail(fromSystemError(error, "resize", this.location, size)))
    })
  }

  /** Punches a hole over the range; answers false when the file system cannot (then nothing changed). */
  punchHole(punch: PunchHole, offset: number, length: number, resume: Resume<boolean>): void {
    if (!this.begin("discard", resume)) return
    const r = punch(this.fd, offset, length)
    if (r._tag === "Failed") {
      this.end(resume, Effect.fail(new StorageError({ reason: "Io", message: `fallocate failed (errno ${r.errno})`, location: this.location })))
    } else {
      this.end(resume, Effect.succeed(r._tag === "Done"))
    }
  }

  /**
   * Where the next data or hole starts (see seek.ts), on this thread: the
   * lseek(SEEK_DATA/SEEK_HOLE) was always called here, and the fstat before
   * it (the file's current size) answers from the inode the open descriptor
   * holds; a round trip through the thread pool for it cost more than the
   * call (a raw source's block status seeks twice per extent).
   */
  seekNow(offset: number, what: "data" | "hole"): number | StorageError {
    if (this.closed) return closedError(this.location, "seek")
    let size: number
    try {
      size = fs.fstatSync(this.fd).size
    } catch (error) {
      return fromSystemError(error, "seek", this.location)
    }
    const r = seekExtent(this.lseek, this.fd, offset, size, what)
    return r >= 0 ? r : new StorageError({ reason: "Io", message: `lseek failed (errno ${-r})`, location: this.location })
  }

  lock(request: LockRequest, resume: Resume<void>): void {
    if (!this.begin("lock", resume)) return
    this.locks.apply(request).then(
      (refused) => this.end(resume, refused === undefined ? Effect.void : Effect.fail(refused)),
      (defect: unknown) => this.end(resume, Effect.die(defect))
    )
  }

  close(): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.closed = true
      if (this.inflight === 0) return closeFd(this.fd)
      return Effect.andThen(
        Effect.callback<void>((resume) => {
          this.onDrained = () => resume(Effect.void)
        }),
        closeFd(this.fd)
      )
    })
  }
}

/**
 * One request to the kernel. If the fiber is interrupted while the request
 * runs, the interruption completes only when the request has: a write
 * abandoned by an interrupted fiber must not land after the writes that
 * follow (the flush of an image closing after a signal rewrites the same
 * metadata), and a read must not fill a buffer its owner has moved on from.
 */
const request = <A>(start: (resume: Resume<A>) => void): Effect.Effect<A, StorageError> =>
  Effect.callback<A, StorageError>((resume) => {
    let finished = false
    let onFinished: (() => void) | undefined
    start((result) => {
      finished = true
      resume(result)
      onFinished?.()
    })
    return Effect.callback<void>((done) => {
      if (finished) done(Effect.void)
      else onFinished = () => done(Effect.void)
    })
  })

const makeShape = (file: NodeFile, readOnly: boolean): BlockStorageShape => {
  const location = file.location
  const punch = file.punch
  const write: BlockStorageShape["write"] = (offset, data) => {
    const invalid = checkRange(location, "write", offset, data.length)
    if (invalid !== undefined) return Effect.fail(invalid)
    if (readOnly) return Effect.fail(readOnlyError(location, "write", offset, data.length))
    return Effect.suspend(() => {
      const now = file.writeNow(offset, data)
      if (typeof now !== "number") return Effect.fail(now)
      return now === data.length ? Effect.void : request<void>((resume) => file.write(offset, data, resume, now))
    })
  }
  const shape: BlockStorageShape = {
    location,
    // Buffered I/O has no alignment requirement. Discard punches holes
    // (punch.ts), so discarded ranges read as zeros; without the binding
    // it is a no-op and says so.
    capabilities: { readOnly, discard: punch !== undefined, alignment: 1 },
    read: (offset, into) => {
      const invalid = checkRange(location, "read", offset, into.length)
      if (invalid !== undefined) return Effect.fail(invalid)
      return Effect.suspend(() => {
        const cached = file.readCached(offset, into)
        return cached === into.length ? Effect.void : request<void>((resume) => file.read(offset, into, resume, cached))
      })
    },
    write,
    ...(readOnly
      ? {}
      : {
          writeNow: writeNowFor(write, (offset, data) => {
            if (checkRange(location, "write", offset, data.length) !== undefined) return false
            const now = file.writeNow(offset, data)
            return typeof now === "number" ? now === data.length : now
          })
        }),
    flush: () => request<void>((resume) => file.flush(resume)),
    size: () => request<number>((resume) => file.size(resume)),
    allocatedSize: () => request<number>((resume) => file.allocatedSize(resume)),
    resize: (size) => {
      const invalid = checkSize(location, size)
      if (invalid !== undefined) return Effect.fail(invalid)
      if (readOnly) return Effect.fail(readOnlyError(location, "resize", size))
      return request<void>((resume) => file.resize(size, resume))
    },
    discard: (offset, length) => {
      const invalid = checkRange(location, "discard", offset, length)
      if (invalid !== undefined) return Effect.fail(invalid)
      if (readOnly) return Effect.fail(readOnlyError(location, "discard", offset, length))
      if (punch === undefined) return Effect.suspend(() => (file.closed ? Effect.fail(closedError(location, "discard")) : Effect.void))
      // A file system without hole punching gets zeros instead, so that the range still reads as zeros.
      return Effect.flatMap(request<boolean>((resume) => file.punchHole(punch, offset, length, resume)), (punched) =>
        punched ? Effect.void : zeroFill(shape, offset, length)
      )
    },
    seekExtent: (offset, what) =>
      Effect.suspend(() => {
        const r = file.seekNow(offset, what)
        return typeof r === "number" ? Effect.succeed(r) : Effect.fail(r)
      }),
    lock: (wanted) => request<void>((resume) => file.lock(wanted, resume))
  }
  return shape
}

/**
 * Opens the file at `path` as a {@link BlockStorageShape} with positional
 * I/O (pread/pwrite through `fs.read`/`fs.write` on the descriptor), closed
 * when the scope ends (after in-flight requests finish).
 *
 * - `readOnly` opens O_RDONLY; otherwise O_RDWR, plus O_CREAT with `create`
 *   and O_TRUNC with `truncate` (a read-only truncate fails with `ReadOnly`).
 * - `flush` is fdatasync, `size` fstat, `resize` ftruncate; `discard`
 *   punches a hole (fallocate through koffi, see `punch.ts`), or writes
 *   zeros where the file system cannot; a no-op (`capabilities.discard`
 *   false) where the call cannot be had.
 * - An empty name fails with `Unsupported` (QEMU: "The 'file' block driver
 *   requires a file name").
 * - Opening never blocks (O_NONBLOCK), and only regular files, block and
 *   character devices are accepted: a FIFO or a directory fails with
 *   `Unsupported` and QEMU's message (see {@link unsupportedFileType}).
 * - `lock` takes QEMU's image locks (fcntl open-file-description locks,
 *   see `lock.ts`); none are held until it is called, all go with the
 *   descriptor.
 * - Errors: ENOENT → NotFound, EACCES/EPERM → PermissionDenied, EROFS →
 *   ReadOnly, others → Io; `location` is the path.
 */
export const openNodeFile = (path: string, options: OpenOptions): Effect.Effect<BlockStorageShape, StorageError, Scope.Scope> => {
  if (path === "") {
    return Effect.fail(new StorageError({ reason: "Unsupported", message: "The 'file' block driver requires a file name", location: path }))
  }
  if (options.readOnly && options.truncate === true) {
    return Effect.fail(readOnlyError(path, "truncate"))
  }
  const acquire = Effect.flatMap(Effect.promise(() => Promise.all([nowaitBinding(), punchBinding(), lseekBinding()])), ([nowait, punch, lseek]) =>
    Effect.map(openFd(path, options), (opened) => new NodeFile(opened.fd, path, nowait, opened.regular, punch, lseek))
  )
  return Effect.map(
    Effect.acquireRelease(acquire, (file) => file.close()),
    (file) => makeShape(file, options.readOnly)
  )
}

/** Layers providing {@link BlockStorage} from a file. */
export const NodeFileStorage = {
  /** The file at `path`, opened when the layer is built and closed with it. */
  layer: (path: string, options: OpenOptions): Layer.Layer<BlockStorage, StorageError> =>
    Layer.effect(BlockStorage, openNodeFile(path, options))
} as const
