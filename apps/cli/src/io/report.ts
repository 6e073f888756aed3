/** qemu-io's output for data and timings: the hex dump of `read -v` and the statistics report. */
import { cFixed } from "../text/cformat.js"
import { cvtstr, timestr } from "../text/sizes.js"

const isAlnum = (b: number): boolean => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)

/** qemu-io's dump_buffer: offset, 16 hex bytes, then alphanumerics (others as '.'). */
export const hexDump = (buf: Uint8Array, offset: number): string => {
  const lines: string[] = []
  for (let i = 0; i < buf.length; i += 16) {
    const end = Math.min(buf.length, i + 16)
    let hex = ""
    let text = ""
    for (let j = i; j < end; j++) {
      const b = buf[j]!
      hex += (b < 16 ? "0" : "") + b.toString(16) + " "
      text += isAlnum(b) ? String.fromCharCode(b) : "."
    }
    lines.push(`${(offset + i).toString(16).padStart(8, "0")}:  ${hex} ${text}\n`)
  }
  return lines.join("")
}

/** The statistics lines after an I/O command (print_report); `csv`: the one-line form of -C. */
export const report = (op: string, seconds: number, offset: number, count: number, total: number, ops: number, csv: boolean): string => {
  const t = Math.max(seconds, 1e-9)
  if (csv) {
    return `${total},${ops},${timestr(seconds, true)},${cFixed(total / t, 3)},${cFixed(ops / t, 3)}\n`
  }
  return (
    `${op} ${total}/${count} bytes at offset ${offset}\n` +
    `${cvtstr(total)}, ${ops} ops; ${timestr(seconds, false)} (${cvtstr(total / t)}/sec and ${cFixed(ops / t, 4)} ops/sec)\n`
  )
}
