import { Effect } from "effect"
import { rawOffsetUnaligned } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { countRegion } from "./count.js"
import { reftableEntry } from "./entries.js"
import { EFBIG, EINVAL } from "./io.js"
import { MAX_IMRT_CLUSTERS } from "./imrt.js"
import type { Fix, Pass } from "./pass.js"

/** QEMU's INT64_MAX, as the nearest double. */
const INT64_MAX = 2 ** 63

/**
 * Checks the refcount table entries and counts the refcount blocks (QEMU's
 * check_refblocks). With `fix.errors`, a block past the end of the file is
 * made part of it by growing the file, as QEMU does.
 */
export function checkRefblocks(p: Pass, fix: Fix): Effect.Effect<void, StorageError> {
  return Effect.gen(function* () {
    const img = p.img
    const cs = img.clusterSize
    const n = Math.min(img.reftableEntries, Math.floor(img.reftable.length / 8))
    for (let i = 0; i < n; i++) {
      const { offset, reservedBitsSet, lo } = reftableEntry(img.reftable, i)
      if (offset === 0 && !reservedBitsSet) continue
      if (reservedBitsSet) {
        p.log(`ERROR refcount table entry ${i} has reserved bits set`)
        p.tally.corruptions++
        p.rebuild = true
        continue
      }
      if (rawOffsetUnaligned(lo, cs)) {
        p.log(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`)
        p.tally.corruptions++
        p.rebuild = true
        continue
      }
      const cluster = Math.floor(offset / cs)
      if (cluster >= p.imrt.size) {
        p.tally.corruptions++
        p.log(`${fix.errors ? "Repairing" : "ERROR"} refcount block ${i} is outside image`)
        if (fix.errors) {
          const failure = yield* growFileFor(p, offset)
          if (failure === undefined) {
            p.tally.corruptions--
            p.tally.corruptionsFixed++
            countRegion(p, offset, cs)
            continue
          }
          p.rebuild = true
          p.log(`ERROR could not resize image: ${failure}`)
        }
        continue
      }
      countRegion(p, offset, cs)
      const count = p.imrt.get(cluster)
      if (count !== 1) {
        p.log(`ERROR refcount block ${i} refcount=${count}`)
        p.tally.corruptions++
        p.rebuild = true
      }
    }
  })
}

/** Grows the file to end with the cluster at `offset`; returns the strerror text on failure. */
function growFileFor(p: Pass, offset: number): Effect.Effect<string | undefined, StorageError> {
  return Effect.gen(function* () {
    const cs = p.img.clusterSize
    if (offset > INT64_MAX - cs) return EINVAL
    const target = offset + cs
    // Past what we can count, as past what the host file system takes: the resize fails (QEMU prints its error).
    if (!Number.isSafeInteger(target) || target / cs > MAX_IMRT_CLUSTERS) {
      p.log(`Could not resize file: ${EFBIG}`)
      return EFBIG
    }
    const resized = yield* Effect.result(p.io.resize(target))
    if (resized._tag === "Failure") {
      p.log(`Could not resize file: ${resized.failure.message}`)
      return resized.failure.message
    }
    const size = yield* p.io.size()
    p.img.fileSize = size
    p.imrt.grow(Math.ceil(size / cs))
    if (Math.floor(offset / cs) >= p.imrt.size) return EINVAL
    return undefined
  })
}
