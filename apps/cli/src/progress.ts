import { printNow } from "./output.js"
import { cFixedPadded } from "./text/cformat.js"

/**
 * qemu-img's `-p` progress ("    (12.34/100%)" followed by a carriage
 * return, on stdout), printed whenever it moves by at least `minSkip`
 * percent (1 for most commands, 2 for rebase, as qemu_progress_init).
 */
export class Progress {
  private done = 0
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

  finish(): void {
    this.print(100)
    printNow("\n")
  }
}
