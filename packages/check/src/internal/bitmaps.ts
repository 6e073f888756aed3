import { Effect } from "effect"
import { rawHostOffset, readRawWord } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { bitmapTableValid } from "./bitmap-directory.js"
import { countRegion } from "./count.js"
import { offsetHex } from "./entries.js"
import { type CheckAborted, EINVAL, abort } from "./io.js"
import type { Pass } from "./pass.js"
import { readBounded } from "./state.js"

/**
 * Counts the bitmap directory, bitmap tables and bitmap data clusters
 * (QEMU's qcow2_check_bitmaps_refcounts). The directory was validated when
 * the image was opened; a bitmap table that became unreadable since is a
 * corruption that ends the check (EINVAL), as in QEMU.
 */
export function checkBitmapReferences(p: Pass): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const img = p.img
    const info = img.bitmaps
    if (info === undefined) return
    const cs = img.clusterSize
    countRegion(p, info.directoryOffset, info.directorySize)
    for (const bm of info.bitmaps) {
      countRegion(p, bm.tableOffset, bm.tableSize * 8, bm.tableOffsetHex)
      const table = yield* readBounded(p.io, img.fileSize, bm.tableOffset, bm.tableSize * 8)
      const n = Math.floor(table.length / 8)
      if (!bitmapTableValid(table, n, cs)) {
        p.tally.corruptions++
        return yield* abort(EINVAL)
      }
      for (let i = 0; i < n; i++) {
        const { hi, lo } = readRawWord(table, i * 8)
        const offset = rawHostOffset(hi, lo)
        if (offset !== 0) countRegion(p, offset, cs, offsetHex(hi, lo))
      }
    }
  })
}
