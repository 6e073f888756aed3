import { Effect } from "effect"
import { Limits, snapshotL1Problem } from "@qcow2/format"
import type { SnapshotEntry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError, errnoOfFailure, ImageError, strerrorOfFailure, toImageError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { adjustReachable, recomputeCopied } from "./snapshot-refs.js"
import { freeClusters, withDiscards } from "./free.js"

/** When a snapshot is taken (`qemu-img snapshot -c` stores the wall clock, microsecond precision). */
export interface SnapshotTime {
  readonly seconds: number
  readonly nanoseconds: number
}

/** QEMU keeps names in a 256-byte buffer: longer names are cut to 255 bytes (pstrcpy). */
const MAX_NAME_BYTES = 255

const unsupported = () =>
  new ClusterError({ reason: "Unsupported", message: "Internal snapshots are not supported with an external data file", errno: "ENOTSUP" })

const notFound = (message: string) => new ClusterError({ reason: "InvalidArgument", message, errno: "ENOENT" })

/**
 * QEMU's check of a snapshot's L1 table before use (qcow2_validate_table,
 * "Snapshot L1 table"): at most 32 MiB of entries, a cluster-aligned
 * offset, and an end that fits 63 bits.
 */
export function validateSnapshotL1(engine: Qcow2Engine, s: SnapshotEntry): ClusterError | undefined {
  const problem = snapshotL1Problem(s.l1TableOffset, s.l1Size, engine.geometry.clusterSize)
  return problem === undefined ? undefined : new ClusterError({ reason: "InvalidArgument", message: problem.message, errno: problem.errno })
}

/** Reads a snapshot's L1 table into a buffer of at least `minEntries` entries (zero-padded), COPIED flags cleared. */
function readSnapshotL1(engine: Qcow2Engine, s: SnapshotEntry, minEntries: number): Effect.Effect<Uint8Array, EngineFailure> {
  const bytes = new Uint8Array(Math.max(s.l1Size, minEntries, 1) * 8)
  if (s.l1Size === 0) return Effect.succeed(bytes)
  return Effect.map(engine.storage.read(s.l1TableOffset, bytes.subarray(0, s.l1Size * 8)), () => {
    for (let i = 0; i < s.l1Size; i++) bytes[i * 8] = bytes[i * 8]! & 0x7f
    return bytes
  })
}

/** `name` cut to at most 255 UTF-8 bytes, as QEMU's fixed-size name buffer keeps it. */
function snapshotName(name: string): string {
  const bytes = new TextEncoder().encode(name)
  return bytes.length <= MAX_NAME_BYTES ? name : new TextDecoder().decode(bytes.subarray(0, MAX_NAME_BYTES))
}

/**
 * Takes an internal snapshot of the active state (QEMU's
 * qcow2_snapshot_create; spec "Snapshots"): the active L1 table is copied
 * to new clusters, everything it reaches gains a reference, COPIED flags
 * are cleared where clusters became shared, and only then, with all of
 * that durable, is the new snapshot table written and the header switched
 * to it. The new ID is one more than the largest; the VM state is empty;
 * the entry records the virtual size. A refcount that would overflow
 * fails the snapshot (EINVAL, as QEMU) and leaves only the new L1 table
 * leaked. Call with the metadata lock held.
 */
export function createSnapshot(engine: Qcow2Engine, name: string, time: SnapshotTime, icount: bigint): Effect.Effect<SnapshotEntry, EngineFailure> {
  return Effect.gen(function* () {
    if (engine.externalData) return yield* unsupported()
    const table = engine.snapshots
    if (table.entries.length >= Limits.maxSnapshots) {
      return yield* new ClusterError({ reason: "InvalidArgument", message: `the image already has ${Limits.maxSnapshots} snapshots`, errno: "EFBIG" })
    }
    const cs = engine.geometry.clusterSize
    const entries = engine.l1.size
    const l1 = new Uint8Array(Math.max(entries, 1) * 8)
    l1.set(engine.l1.table)
    for (let i = 0; i < entries; i++) l1[i * 8] = l1[i * 8]! & 0x7f
    let l1Offset = 0
    if (entries > 0) {
      l1Offset = yield* engine.refcounts.allocate(Math.ceil((entries * 8) / cs))
      yield* engine.integrity.guardWrite(l1Offset, entries * 8)
      yield* engine.storage.write(l1Offset, l1.subarray(0, entries * 8))
    }
    yield* adjustReachable(engine, l1, entries, 1).pipe(
      Effect.mapError((error) =>
        error._tag === "RefcountError" && error.reason === "Overflow" ? new ClusterError({ reason: "InvalidArgument", message: error.message, errno: "EINVAL" }) : error
      )
    )
    yield* recomputeCopied(engine)
    yield* engine.flushMetadata()
    const entry: SnapshotEntry = {
      l1TableOffset: l1Offset,
      l1Size: entries,
      id: table.nextId(),
      name: snapshotName(name),
      dateSeconds: time.seconds,
      dateNanoseconds: time.nanoseconds,
      vmClockNanoseconds: 0n,
      vmStateSize: 0,
      diskSize: engine.virtualSize,
      icount,
      extraData: new Uint8Array(0)
    }
    yield* table.write([...table.entries, entry], tableIo(engine))
    return entry
  })
}

/**
 * Reverts the active state to a snapshot found by ID, else by name (QEMU's
 * qcow2_snapshot_goto). The virtual size becomes the snapshot's first
 * (`resize`, run by the caller with `resizeTo`); then, in this order so
 * that a crash only leaks: everything the snapshot reaches gains a
 * reference, its L1 entries replace the active ones in place (the active
 * table grown first when the snapshot's is larger), the old active
 * references are dropped, and COPIED flags are recomputed.
 */
export const snapshotForApply = (engine: Qcow2Engine, idOrName: string): SnapshotEntry | ClusterError => {
  if (engine.externalData) return unsupported()
  const index = engine.snapshots.findByIdOrName(idOrName)
  if (index < 0) return notFound(`Can't find the snapshot '${idOrName}'`)
  const s = engine.snapshots.entries[index]!
  return validateSnapshotL1(engine, s) ?? s
}

/** The revert itself, after `snapshotForApply` and the resize to the snapshot's disk size. Call with the metadata lock held. */
export function applySnapshot(engine: Qcow2Engine, s: SnapshotEntry): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    if (s.l1Size > engine.l1.size) yield* engine.l1.grow(s.l1Size, engine.refcounts)
    const next = yield* readSnapshotL1(engine, s, engine.l1.size)
    yield* adjustReachable(engine, next, s.l1Size, 1)
    yield* engine.flushMetadata()
    const previous = new Uint8Array(engine.l1.table)
    yield* engine.l1.overwrite(next)
    yield* withDiscards(engine, adjustReachable(engine, previous, previous.length / 8, -1))
    yield* engine.flushMetadata()
    yield* recomputeCopied(engine)
    yield* engine.flushMetadata()
  })
}

/**
 * Deletes the snapshot with this ID and name (either may be undefined,
 * not both; QEMU's qcow2_snapshot_delete): the snapshot table without it
 * is written first, then everything its L1 table reached loses a
 * reference, its L1 table is freed, and the active COPIED flags are
 * recomputed, so that deleting the last snapshot leaves every refcount at
 * 1. A failure after the table was rewritten only leaks clusters. Call
 * with the metadata lock held.
 */
export function deleteSnapshot(engine: Qcow2Engine, id: string | undefined, name: string | undefined): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    if (engine.externalData) return yield* unsupported()
    const table = engine.snapshots
    const index = table.find(id, name)
    if (index < 0) return yield* notFound("Can't find the snapshot")
    const s = table.entries[index]!
    const invalid = validateSnapshotL1(engine, s)
    if (invalid !== undefined) return yield* invalid
    const l1 = yield* readSnapshotL1(engine, s, 0)
    yield* table.write(table.entries.filter((_, i) => i !== index), tableIo(engine))
    const freeAll = Effect.andThen(adjustReachable(engine, l1, s.l1Size, -1), s.l1Size > 0 ? freeClusters(engine, s.l1TableOffset, s.l1Size * 8, true) : Effect.void)
    yield* withDiscards(engine, freeAll).pipe(
      Effect.mapError((error) => {
        const cause = toImageError(error, engine.location)
        return new ImageError({ ...cause, message: `Failed to free the cluster and L1 table: ${strerrorOfFailure(error)}`, errno: errnoOfFailure(error), cause })
      })
    )
    yield* engine.flushMetadata()
    yield* recomputeCopied(engine)
    yield* engine.flushMetadata()
  })
}

/**
 * Switches a read-only engine's L1 table to a snapshot's, so that reads
 * see the snapshot's content (QEMU's qcow2_snapshot_load_tmp, behind
 * `convert -l`). The virtual size stays the image's. `id` and `name` as
 * for `deleteSnapshot`.
 */
export function loadSnapshot(engine: Qcow2Engine, id: string | undefined, name: string | undefined): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    if (!engine.integrity.readOnly) return yield* new ClusterError({ reason: "InvalidArgument", message: "Device is not readonly", errno: "EINVAL" })
    const index = engine.snapshots.find(id, name)
    if (index < 0) return yield* notFound("Can't find snapshot")
    const s = engine.snapshots.entries[index]!
    const invalid = validateSnapshotL1(engine, s)
    if (invalid !== undefined) return yield* invalid
    const l1 = yield* readSnapshotL1(engine, s, 0)
    engine.l1.replace(l1, s.l1TableOffset, s.l1Size)
    engine.decompressed.forget()
  })
}

/**
 * Gives every snapshot the extra data a v3 image requires before an
 * upgrade (QEMU's qcow2_upgrade rewrites the table with
 * qcow2_write_snapshots when an entry lacks it): the 64-bit VM state size,
 * the disk size and the icount, a missing disk size taken as the image's
 * virtual size and a missing icount as -1 (none), as QEMU reads a v2 entry
 * without them. Nothing is written when every entry has them already.
 * Call with the metadata lock held.
 */
export function completeSnapshotExtraData(engine: Qcow2Engine): Effect.Effect<void, EngineFailure> {
  const table = engine.snapshots
  if (!table.entries.some((s) => s.extraData.length < 16)) return Effect.void
  const completed = table.entries.map((s) => ({ ...s, diskSize: s.diskSize ?? engine.virtualSize, icount: s.icount ?? -1n }))
  return table.write(completed, tableIo(engine))
}

const tableIo = (engine: Qcow2Engine) => ({
  storage: engine.storage,
  header: engine.header,
  integrity: engine.integrity,
  refcounts: engine.refcounts,
  flush: () => engine.flushMetadata(),
  report: engine.report
})
