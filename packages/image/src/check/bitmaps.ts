import { Effect } from "effect"
import type { ImageError } from "../errors.js"
import { type CheckAborted, EINVAL, abort } from "./io.js"
import type { Pass } from "./pass.js"
import { countRegion } from "./references.js"
import { TWO_32, be16, be32, hex64, readBounded } from "./state.js"

/** QEMU's limits on bitmap directory entries (block/qcow2-bitmap.c). */
const BME_MAX_TABLE_SIZE = 0x8000000
const BME_MAX_PHYS_SIZE = 0x20000000
const BME_MIN_GRANULARITY_BITS = 9
const BME_MAX_GRANULARITY_BITS = 31
const BME_MAX_NAME_SIZE = 1023
const BME_RESERVED_FLAGS = 0xfffffffc
const ENTRY_FIXED_SIZE = 24

interface Bitmap {
  readonly tableOffset: number
  readonly tableOffsetHex: string
  readonly tableSize: number
}

const align8 = (n: number): number => Math.ceil(n / 8) * 8

/**
 * Parses and validates the bitmap directory as QEMU's bitmap_list_load
 * does; undefined when QEMU would reject it ("Broken bitmap directory",
 * wrong count, extra data, an entry outside the constraints).
 */
function parseDirectory(dir: Uint8Array, size: number, count: number, clusterSize: number, virtualSize: number): Array<Bitmap> | undefined {
  const out: Array<Bitmap> = []
  let e = 0
  while (e < size) {
    if (e + ENTRY_FIXED_SIZE > size) return undefined
    if (out.length + 1 > count) return undefined
    const offHi = be32(dir, e)
    const offLo = be32(dir, e + 4)
    const tableSize = be32(dir, e + 8)
    const flags = be32(dir, e + 12)
    const type = e + 16 < dir.length ? dir[e + 16]! : 0
    const granularityBits = e + 17 < dir.length ? dir[e + 17]! : 0
    const nameSize = be16(dir, e + 18)
    const extraSize = be32(dir, e + 20)
    const next = e + align8(ENTRY_FIXED_SIZE + nameSize + extraSize)
    if (next > size) return undefined
    if (extraSize !== 0) return undefined
    const tableOffset = offHi * TWO_32 + offLo
    const bad =
      tableSize === 0 ||
      tableOffset === 0 ||
      offLo % clusterSize !== 0 ||
      tableSize > BME_MAX_TABLE_SIZE ||
      granularityBits > BME_MAX_GRANULARITY_BITS ||
      granularityBits < BME_MIN_GRANULARITY_BITS ||
      (flags & BME_RESERVED_FLAGS) !== 0 ||
      nameSize > BME_MAX_NAME_SIZE ||
      type !== 1
    if (bad) return undefined
    const physBytes = tableSize * clusterSize
    if (physBytes > BME_MAX_PHYS_SIZE || virtualSize > physBytes * 8 * 2 ** granularityBits) return undefined
    out.push({ tableOffset, tableOffsetHex: hex64(offHi, offLo), tableSize })
    e = next
  }
  if (out.length !== count || e !== size) return undefined
  return out
}

/**
 * Counts the bitmap directory, bitmap tables and bitmap data clusters
 * (QEMU's qcow2_check_bitmaps_refcounts). A directory or table QEMU cannot
 * load is a corruption that ends the check (EINVAL), as in QEMU.
 */
export function checkBitmapReferences(p: Pass): Effect.Effect<void, ImageError | CheckAborted> {
  return Effect.gen(function* () {
    const img = p.img
    const info = img.bitmaps
    if (info === undefined) return
    const cs = img.clusterSize
    countRegion(p, info.directoryOffset, info.directorySize)
    const dir = info.directorySize === 0 ? new Uint8Array(0) : yield* readBounded(p.io, img.fileSize, info.directoryOffset, info.directorySize)
    const bitmaps = info.directorySize === 0 ? undefined : parseDirectory(dir, info.directorySize, info.nbBitmaps, cs, img.virtualSize)
    if (bitmaps === undefined) {
      p.tally.corruptions++
      return yield* abort(EINVAL)
    }
    for (const bm of bitmaps) {
      countRegion(p, bm.tableOffset, bm.tableSize * 8, bm.tableOffsetHex)
      const table = yield* readBounded(p.io, img.fileSize, bm.tableOffset, bm.tableSize * 8)
      const n = Math.floor(table.length / 8)
      for (let i = 0; i < n; i++) {
        const hi = be32(table, i * 8)
        const lo = be32(table, i * 8 + 4)
        const offsetSet = (hi & 0x00ffffff) !== 0 || (lo & 0xfffffe00) !== 0
        const invalid =
          (hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 || (offsetSet && ((lo & 1) !== 0 || (lo & (cs - 1) & 0xfffffe00) !== 0))
        if (invalid) {
          p.tally.corruptions++
          return yield* abort(EINVAL)
        }
      }
      for (let i = 0; i < n; i++) {
        const hi = be32(table, i * 8)
        const lo = be32(table, i * 8 + 4)
        const offset = (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0)
        if (offset !== 0) countRegion(p, offset, cs, hex64(hi & 0x00ffffff, (lo & 0xfffffe00) >>> 0))
      }
    }
  })
}
