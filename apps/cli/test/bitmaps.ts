/**
 * Reads the persistent bitmaps of a qcow2 file straight from its bytes
 * (qcow2.txt "Bitmaps"), so tests can compare the bits QEMU and this
 * toolkit stored without trusting either one's reader.
 */
import * as fs from "node:fs"
import { decodeBitmapDirectory, decodeImageHeader, readBitmapTableEntry } from "@qcow2/format"

export interface StoredBitmap {
  readonly name: string
  readonly flags: number
  readonly granularity: number
  /** Dirty guest ranges [offset, length], merged. */
  readonly dirty: ReadonlyArray<readonly [number, number]>
}

export const storedBitmaps = (file: string): StoredBitmap[] => {
  const bytes = new Uint8Array(fs.readFileSync(file))
  const image = decodeImageHeader(bytes.subarray(0, 2 ** 21))
  const ext = image.extensions.bitmaps
  if (ext === undefined) return []
  const cs = 2 ** image.header.clusterBits
  const entries = decodeBitmapDirectory(bytes.subarray(ext.directoryOffset, ext.directoryOffset + ext.directorySize), ext.nbBitmaps)
  return entries.map((e) => {
    const granularity = 2 ** e.granularityBits
    const table = bytes.subarray(e.tableOffset, e.tableOffset + e.tableSize * 8)
    const dirty: Array<[number, number]> = []
    for (let i = 0; i < e.tableSize; i++) {
      const entry = readBitmapTableEntry(table, i)
      const data = entry.offset !== 0 ? bytes.subarray(entry.offset, entry.offset + cs) : entry.allOnes ? new Uint8Array(cs).fill(0xff) : undefined
      if (data === undefined) continue
      for (let bit = 0; bit < cs * 8; bit++) {
        if (((data[bit >>> 3]! >>> (bit & 7)) & 1) === 0) continue
        const offset = (i * cs * 8 + bit) * granularity
        const last = dirty[dirty.length - 1]
        if (last !== undefined && last[0] + last[1] === offset) last[1] += granularity
        else dirty.push([offset, granularity])
      }
    }
    return { name: e.name, flags: e.flags, granularity, dirty }
  })
}

/** stderr with the program name QEMU or this CLI prefixes its messages with taken out. */
export const messages = (stderr: string): string => stderr.replace(/^(qemu-img|qemu-io|qcow2): /gm, "")
