import { printNow } from "./output.js"
import { cFixedPadded } from "./text/cformat.js"

/**
 * qemu-img's `-p` progress ("    (12.34/100%)" followed by a carriage
 * return, on stdout), printed whenever it moves by at least `minSkip`
 * percent (1 for most commands, 2 for rebase, as qemu_progress_init).
 */
export class Progress {
  private done = 0
  /** The single-precision percentage `step` adds up. */
  private current = 0
  private lastPrinted = -Infinity
  constructor(
    private readonly total: number,
    private readonly minSkip = 1
  ) {
    this.print(0)
  }

  private print(percent: number): void {
    this.lastPrinted = percent
    printNow(`    (${cFixedPadded(percent, 2, 3, false)}/100%)\r`)
  }

  advance(bytes: number): void {
    this.done += bytes
    const percent = this.total === 0 ? 100 : Math.min(100, (this.done * 100) / this.total)
    if (percent - this.lastPrinted >= this.minSkip) this.print(percent)
  }

  /**
   * qemu_progress_print(bytes / total * 100, 100), as qemu-img compare
   * reports each pass: a part of the total, added up in single precision as
   * QEMU's float progress state does, so the same passes print the same
   * lines. Prints when it moved by more than `minSkip`, and at 0 and at
   * 100 (capped there) every time, as QEMU does.
   */
  step(bytes: number): void {
    const f = Math.fround
    const delta = f(f(f(bytes) / f(this.total)) * 100)
    const current = Math.min(100, f(this.current + f(f(delta / 100) * 100)))
    this.current = current
    if (current > f(this.lastPrinted + this.minSkip) || current === 100 || current === 0) this.print(current)
  }

  finish(): void {
    this.print(100)
    printNow("\n")
  }
}
