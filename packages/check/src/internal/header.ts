import { Effect } from "effect"
import { IncompatibleFeature, readRawWord, readU32Lenient } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import type { Io } from "./io.js"

/** Offset of incompatible_features in a v3 header (qcow2.txt "Header"). */
const INCOMPATIBLE_FEATURES = 72
/** The bits a successful repair clears. */
const CLEARED = Number(IncompatibleFeature.Dirty | IncompatibleFeature.Corrupt)

/**
 * Clears the dirty and corrupt bits of a v3 header, if set (QEMU's
 * qcow2_mark_clean and qcow2_mark_consistent after a repair that left no
 * corruption). The rest of the header is left as it is on disk.
 */
export function markConsistent(io: Io): Effect.Effect<void, StorageError> {
  return Effect.gen(function* () {
    const head = yield* io.read(0, INCOMPATIBLE_FEATURES + 8)
    if (readU32Lenient(head, 4) < 3) return
    const { hi, lo } = readRawWord(head, INCOMPATIBLE_FEATURES)
    if ((lo & CLEARED) === 0) return
    const field = new Uint8Array(8)
    const view = new DataView(field.buffer)
    view.setUint32(0, hi)
    view.setUint32(4, (lo & ~CLEARED) >>> 0)
    yield* io.flush()
    yield* io.write(INCOMPATIBLE_FEATURES, field)
    yield* io.flush()
  })
}
