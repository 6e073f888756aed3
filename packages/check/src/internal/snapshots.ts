import { Effect } from "effect"
import { Limits, SNAPSHOT_ENTRY_FIXED_SIZE, hex64, rawSnapshotHeader, readRawWord, readU32Lenient } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { type CheckAborted, EFBIG, EINVAL, type Io, abort } from "./io.js"
import type { Fix } from "./pass.js"
import type { ImageInfo, SnapshotInfo, Tally } from "./state.js"

/** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA. */
const MAX_EXTRA_DATA = 1024
/** sizeof(QCowSnapshotHeader) and sizeof(QCowSnapshotExtraData) in QEMU 7.2. */
const ENTRY_HEADER = SNAPSHOT_ENTRY_FIXED_SIZE
const KNOWN_EXTRA = 24
const INT_MAX = 2 ** 31 - 1
const INT64_MAX = 2 ** 63

/** Sequential reads of the snapshot table through a window, so each entry does not cost a storage call. */
class Cursor {
  private window: Uint8Array = new Uint8Array(0)
  private windowStart = 0

  constructor(
    private readonly io: Io,
    private readonly fileSize: number
  ) {}

  read(offset: number, length: number): Effect.Effect<Uint8Array, StorageError> {
    if (offset >= this.windowStart && offset + length <= this.windowStart + this.window.length) {
      return Effect.succeed(this.window.subarray(offset - this.windowStart, offset - this.windowStart + length))
    }
    if (offset >= this.fileSize) return Effect.succeed(new Uint8Array(length))
    const size = Math.max(length, 1 << 20)
    return this.io.read(offset, Math.min(size, this.fileSize - offset)).pipe(
      Effect.map((w) => {
        this.window = w
        this.windowStart = offset
        const out = new Uint8Array(length)
        out.set(w.subarray(0, Math.min(length, w.length)))
        return out
      })
    )
  }
}

const cString = (b: Uint8Array): string => {
  const nul = b.indexOf(0)
  return new TextDecoder("utf-8").decode(nul < 0 ? b : b.subarray(0, nul))
}

/**
 * Reads and checks the snapshot table for the check (QEMU's
 * qcow2_check_read_snapshot_table and qcow2_do_read_snapshots in repair
 * mode). With `fix.errors`, snapshots past QEMU's limits are dropped from
 * the header count and oversized extra data is ignored. Fills
 * img.snapshots / snapshotsOffset / snapshotsSize.
 */
export function readSnapshotTable(io: Io, img: ImageInfo, fix: Fix, tally: Tally, log: (m: string) => void): Effect.Effect<void, StorageError | CheckAborted> {
  return Effect.gen(function* () {
    const pointer = yield* io.read(60, 12)
    let nb = readU32Lenient(pointer, 0)
    const { hi: offHi, lo: offLo } = readRawWord(pointer, 4)
    const tableOffset = offHi * 2 ** 32 + offLo
    let reduced = 0
    if (nb > Limits.maxSnapshots && fix.errors) {
      log(`Discarding ${nb - Limits.maxSnapshots} overhanging snapshots`)
      reduced += nb - Limits.maxSnapshots
      nb = Limits.maxSnapshots
    }
    if (nb > Limits.maxSnapshots) {
      tally.checkErrors++
      log("ERROR snapshot table too large")
      log(`You can force-remove all ${nb - Limits.maxSnapshots} overhanging snapshots with qemu-img check -r all`)
      return yield* abort(EFBIG, "ERROR snapshot table too large")
    }
    if (INT64_MAX - nb * ENTRY_HEADER < tableOffset || offLo % img.clusterSize !== 0) {
      tally.checkErrors++
      log("ERROR snapshot table offset invalid")
      return yield* abort(EINVAL)
    }

    const repair = fix.errors
    const cursor = new Cursor(io, img.fileSize)
    const snapshots: Array<SnapshotInfo> = []
    let extraDropped = 0
    let offset = tableOffset
    let tableLength = 0
    const fail = (message: string, hint: string) =>
      Effect.gen(function* () {
        tally.checkErrors++
        const line = `ERROR failed to read the snapshot table: ${message}`
        log(line)
        log(hint)
        return yield* abort(EFBIG, line)
      })
    for (let i = 0; i < nb; i++) {
      const before = offset
      tableLength = Math.ceil(tableLength / 8) * 8
      offset = Math.ceil(offset / 8) * 8
      const h = yield* cursor.read(offset, ENTRY_HEADER)
      offset += ENTRY_HEADER
      const fixed = rawSnapshotHeader(h, 0)
      const { hi: l1Hi, lo: l1Lo } = fixed.l1Offset
      const { idSize, nameSize } = fixed
      let extra = fixed.extraDataSize
      let truncate = false
      if (extra > MAX_EXTRA_DATA) {
        if (!repair) {
          return yield* fail(
            `Too much extra metadata in snapshot table entry ${i}`,
            "You can force-remove this extra metadata with qemu-img check -r all"
          )
        }
        log(`Discarding too much extra metadata in snapshot table entry ${i} (${extra} > ${MAX_EXTRA_DATA})`)
        extraDropped++
        truncate = true
      }
      const knownExtra = (yield* cursor.read(offset, Math.min(KNOWN_EXTRA, extra))).slice()
      offset += Math.min(KNOWN_EXTRA, extra)
      let unknownExtra = new Uint8Array(0)
      if (extra > KNOWN_EXTRA) {
        const extraEnd = offset + extra - KNOWN_EXTRA
        if (truncate) extra = MAX_EXTRA_DATA
        unknownExtra = (yield* cursor.read(offset, extra - KNOWN_EXTRA)).slice()
        offset = extraEnd
      }
      const idBytes = (yield* cursor.read(offset, idSize)).slice()
      offset += idSize
      const nameBytes = (yield* cursor.read(offset, nameSize)).slice()
      offset += nameSize
      tableLength += ENTRY_HEADER + extra + idSize + nameSize
      if (tableLength > Limits.maxSnapshotTableBytes || offset - tableOffset > INT_MAX) {
        if (!repair) {
          return yield* fail(
            "Snapshot table is too big",
            `You can force-remove all ${nb - i} overhanging snapshots with qemu-img check -r all`
          )
        }
        log(`Discarding ${nb - i} overhanging snapshots (snapshot table is too big)`)
        reduced += nb - i
        nb = i
        offset = before
        break
      }
      snapshots.push({
        id: cString(idBytes),
        name: cString(nameBytes),
        l1Offset: l1Hi * 2 ** 32 + l1Lo,
        l1OffsetHex: hex64(l1Hi, l1Lo),
        l1OffsetAligned: l1Lo % img.clusterSize === 0,
        l1Size: fixed.l1Size,
        extraDataSize: extra,
        rawHeader: h.slice(),
        knownExtra,
        unknownExtra,
        idBytes,
        nameBytes
      })
    }
    img.snapshots = snapshots
    img.snapshotsOffset = tableOffset
    img.snapshotsSize = offset - tableOffset
    tally.corruptions += reduced + extraDropped

    if (reduced > 0) {
      const count = new Uint8Array(4)
      new DataView(count.buffer).setUint32(0, snapshots.length)
      yield* io.write(60, count)
      yield* io.flush()
      tally.corruptionsFixed += reduced
      tally.corruptions -= reduced
    }

    if (img.header.version >= 3) {
      snapshots.forEach((s, i) => {
        if (s.extraDataSize < 16) {
          tally.corruptions++
          log(`${fix.errors ? "Repairing" : "ERROR"} snapshot table entry ${i} is incomplete`)
        }
      })
    }
  })
}
