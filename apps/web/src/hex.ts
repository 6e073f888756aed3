/** A hex dump as `od`/qemu-io -v print it: offset, 16 bytes, their printable characters. */
export const hexDump = (offset: number, bytes: Uint8Array): string => {
  const lines: string[] = []
  for (let i = 0; i < bytes.length; i += 16) {
    const row = bytes.subarray(i, i + 16)
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ")
    const text = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("")
    lines.push(`${(offset + i).toString(16).padStart(8, "0")}:  ${hex.padEnd(47)}  ${text}`)
  }
  return lines.join("\n")
}
