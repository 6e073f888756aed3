/**
 * stdout and stderr as QEMU's programs have them (C stdio): stderr is
 * unbuffered; stdout is line-buffered on a terminal and otherwise
 * block-buffered in BUFSIZ (4096-byte) blocks, so that through a pipe
 * or into a file a message on stderr comes before the stdout lines
 * printed ahead of it that have not filled a block, exactly where
 * qemu-img's and qemu-io's do (the iotests' expected output records that
 * order). Commands print many short lines (map extents, hex dumps); they
 * are joined and written in large pieces, and `flushOutput` (fflush) runs
 * before the process sets its exit code.
 *
 * Both are written as C stdio writes them: synchronously, every byte
 * before the call returns (write(2) in a loop). Node's streams would
 * queue what a full pipe does not take and write it later, so with
 * stdout and stderr on one pipe a long stderr message could end after
 * stdout's exit flush, cut in the middle of a line (iotest 272).
 */
import { writeSync } from "node:fs"
import { isatty } from "node:tty"

/** glibc's buffer for a pipe or a regular file (st_blksize). */
const BLOCK = 4096
/** Past this many bytes, the whole blocks pending are written out (what glibc has written by then). */
const BATCH = 1 << 16
const STDOUT = 1
const STDERR = 2

/** A 1 ms pause while a non-blocking pipe is full (the reader has not taken its 64 KiB yet). */
const pause = (): void => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1)
}

/**
 * Writes all of `data` to `fd` before returning, as stdio's fwrite does.
 * EAGAIN (a pipe left non-blocking, full) waits and retries; any other
 * error (EPIPE: the reader is gone) drops the rest, as qemu-img, which
 * ignores SIGPIPE and does not check its writes, loses it.
 */
const writeAll = (fd: number, data: Uint8Array): void => {
  let done = 0
  while (done < data.length) {
    try {
      done += writeSync(fd, data, done)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") return
      pause()
    }
  }
}

class Stdout {
  /** The part of a block already cut (it may end inside a UTF-8 sequence). */
  private head: Buffer | undefined
  private parts: string[] = []
  /** Bytes pending (UTF-8). */
  private bytes = 0
  private readonly lineBuffered: boolean

  constructor(private readonly fd: number) {
    this.lineBuffered = isatty(fd)
  }

  write(text: string): void {
    this.parts.push(text)
    this.bytes += Buffer.byteLength(text)
    if (this.lineBuffered ? text.includes("\n") : this.bytes >= BATCH) this.writeBlocks()
  }

  /** Writes what C stdio would have written by now: everything on a terminal, else the whole 4096-byte blocks. */
  writeBlocks(): void {
    if (this.lineBuffered) return this.flush()
    if (this.bytes < BLOCK) return
    const pending = this.take()
    const cut = pending.length - (pending.length % BLOCK)
    writeAll(this.fd, pending.subarray(0, cut))
    if (cut < pending.length) this.head = pending.subarray(cut)
    this.bytes = pending.length - cut
  }

  flush(): void {
    if (this.bytes === 0) return
    writeAll(this.fd, this.take())
    this.bytes = 0
  }

  private take(): Buffer {
    const text = Buffer.from(this.parts.join(""))
    const pending = this.head !== undefined ? Buffer.concat([this.head, text]) : text
    this.head = undefined
    this.parts = []
    return pending
  }
}

const out = new Stdout(STDOUT)

/** Writes to stdout (buffered as C stdio buffers it). */
export const print = (text: string): void => out.write(text)

/**
 * Writes to stderr at once. What stdout holds stays buffered unless C
 * stdio would have written it already (a full block, or a line on a
 * terminal), so the two interleave as they do for QEMU's programs.
 */
export const eprint = (text: string): void => {
  out.writeBlocks()
  writeAll(STDERR, Buffer.from(text))
}

/** Writes text to stdout right away (progress lines: QEMU flushes them). */
export const printNow = (text: string): void => {
  out.write(text)
  out.flush()
}

/** fflush(stdout): everything printed so far is written. */
export const flushOutput = (): void => {
  out.flush()
}

/** The process exit status: set by the command, or to 1 by effect/cli for a bad command line. */
export const exitStatus = { code: 0 }
