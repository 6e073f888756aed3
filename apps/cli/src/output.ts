/**
 * Buffered stdout/stderr for the CLI. Commands print many short lines (map
 * extents, hex dumps); joining them and writing in large pieces keeps the
 * output fast, and `flushOutput` runs before the process sets its exit code.
 */

const LIMIT = 1 << 16

class Sink {
  private parts: string[] = []
  private size = 0
  constructor(private readonly stream: NodeJS.WriteStream) {}

  write(text: string): void {
    this.parts.push(text)
    this.size += text.length
    if (this.size >= LIMIT) this.flush()
  }

  flush(): void {
    if (this.parts.length === 0) return
    const text = this.parts.join("")
    this.parts = []
    this.size = 0
    this.stream.write(text)
  }
}

const out = new Sink(process.stdout)
const err = new Sink(process.stderr)

/** Writes to stdout (buffered). */
export const print = (text: string): void => out.write(text)

/** Writes to stderr; stdout is flushed first so the two interleave in order. */
export const eprint = (text: string): void => {
  out.flush()
  err.write(text)
  err.flush()
}

/** Writes text to stdout right away (progress lines). */
export const printNow = (text: string): void => {
  out.write(text)
  out.flush()
}

export const flushOutput = (): void => {
  out.flush()
  err.flush()
}

/** The process exit status: set by the command, or to 1 by effect/cli for a bad command line. */
export const exitStatus = { code: 0 }
