import { Effect } from "effect"
import { CompatibleFeature, IncompatibleFeature, OverlapIndex } from "@qcow2/format"
import type { MetadataKind } from "@qcow2/format"
import type { StorageError } from "@qcow2/storage"
import { ClusterError } from "./errors.js"
import type { HeaderState } from "./header.js"

/** No metadata kind exempt from the overlap check. */
const NO_KINDS: ReadonlyArray<MetadataKind> = []

/**
 * Whether the image may be changed, and what must never be overwritten.
 *
 * Consistency rule 5 lives here: a structural inconsistency found while
 * reading or writing (metadata overlapping other metadata, an entry
 * pointing past the end, an unaligned table, a refcount of 0 for a used
 * cluster) marks the image corrupt — the header bit, once — and stops
 * further writes with a clear error; reads go on where they can (QEMU's
 * qcow2_signal_corruption). `overlaps` is the engine's metadata overlap
 * index, asked before every data and metadata write (QEMU's
 * qcow2_pre_write_overlap_check).
 *
 * It also owns the dirty bit of lazy refcounts (QEMU's qcow2_mark_dirty):
 * set on disk before the first metadata change, cleared on a clean close.
 */
export class Integrity {
  readonly overlaps: OverlapIndex
  /** Lazy refcounts in effect: refcount updates may trail the L2 updates (the dirty bit covers them). */
  readonly lazyRefcounts: boolean
  private corrupt: boolean
  private dirty: boolean
  /** A corruption event was reported (QEMU reports one per open image). */
  private signaled = false
  /** A fatal corruption event took the image out of service in this process (see `ejected`). */
  private outOfService = false

  /**
   * `report`: where QEMU's corruption message goes ("qcow2: Marking image
   * as corrupt: …"); `lazy`: lazy refcounts whatever the compatible bit says;
   * `checksInactiveL2`: QEMU's overlap-check.inactive-l2 (see OverlapIndex).
   */
  constructor(
    private readonly header: HeaderState,
    readonly readOnly: boolean,
    readonly location: string,
    private readonly report?: (line: string) => void,
    lazy?: boolean,
    checksInactiveL2 = false
  ) {
    const h = header.header
    this.overlaps = new OverlapIndex(2 ** h.clusterBits, checksInactiveL2)
    this.lazyRefcounts = lazy ?? (h.compatibleFeatures & CompatibleFeature.LazyRefcounts) !== 0n
    this.corrupt = (h.incompatibleFeatures & IncompatibleFeature.Corrupt) !== 0n
    this.dirty = (h.incompatibleFeatures & IncompatibleFeature.Dirty) !== 0n
  }

  get isCorrupt(): boolean {
    return this.corrupt
  }

  /**
   * Whether a fatal corruption event (an image opened writable found
   * damaged, the corrupt bit set by this open) took the image out of
   * service: QEMU's qcow2_signal_corruption then sets bs->drv = NULL, and
   * every later request in the process fails with ENOMEDIUM ("No medium
   * found"), a flush does nothing. An image opened with the bit already
   * set (only a repair does that) stays in service, so the repair goes on.
   */
  get ejected(): boolean {
    return this.outOfService
  }

  /**
   * Whether refcount blocks must reach disk on a flush: always, except
   * while lazy refcounts have the dirty bit set (QEMU's
   * qcow2_need_accurate_refcounts); a clean close still writes them.
   */
  get needsAccurateRefcounts(): boolean {
    return !this.lazyRefcounts || !this.dirty
  }

  /** Why a write cannot go ahead, or undefined when it can. */
  refuseWrite(offset?: number): ClusterError | undefined {
    if (this.readOnly) return new ClusterError({ reason: "ReadOnly", message: `${this.location} is opened read-only`, ...(offset !== undefined ? { offset } : {}) })
    if (this.corrupt) {
      return new ClusterError({
        reason: "Corrupt",
        message: `${this.location} is marked corrupt; writes are refused (run 'qcow2 check -r all')`,
        errno: "EIO",
        ...(offset !== undefined ? { offset } : {})
      })
    }
    return undefined
  }

  /**
   * Records structural damage: sets the corrupt bit (read-write opens
   * only), refuses further writes, and fails with a Corrupt error.
   */
  markCorrupt(message: string, offset?: number): Effect.Effect<never, ClusterError> {
    const error = new ClusterError({
      reason: "Corrupt",
      message: this.readOnly
        ? `${message} (the image is damaged; run 'qcow2 check -r all' on it)`
        : `${message}; further writes are refused (the image is marked corrupt; run 'qcow2 check -r all')`,
      errno: "EIO",
      ...(offset !== undefined ? { offset } : {})
    })
    // QEMU's qcow2_signal_corruption: on a read-only image the damage is not
    // fatal; after the first event only a fatal one on an image not yet
    // marked corrupt is reported.
    if (!this.signaled || (!this.readOnly && !this.corrupt)) {
      this.signaled = true
      this.report?.(
        this.readOnly
          ? `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`
          : `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`
      )
    }
    if (this.readOnly || this.corrupt) {
      this.corrupt = true
      return Effect.fail(error)
    }
    this.corrupt = true
    this.outOfService = true
    return Effect.andThen(Effect.ignore(this.header.setIncompatible(IncompatibleFeature.Corrupt, true)), Effect.fail(error))
  }

  /**
   * A non-fatal corruption event (QEMU's qcow2_signal_corruption with
   * fatal false, e.g. "Cannot free unaligned cluster"): reported unless an
   * event was reported before; nothing is marked and the request goes on.
   */
  reportNonFatal(message: string): void {
    if (this.signaled) return
    this.signaled = true
    this.report?.(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`)
  }

  /**
   * Fails (and marks the image corrupt) when host bytes [offset, +length)
   * hold metadata other than `ignore`: QEMU's "Preventing invalid write on
   * metadata (overlaps with …)". While inactive L2 tables are checked and
   * a snapshot's L1 table fails validation, every write fails with its
   * errno instead (nothing marked; QEMU's check fails the same way).
   */
  guardWrite(offset: number, length: number, ignore: ReadonlyArray<MetadataKind> = NO_KINDS): Effect.Effect<void, ClusterError> {
    const refusal = this.overlaps.inactiveL2Refusal
    if (refusal !== undefined) return Effect.fail(new ClusterError({ reason: "InvalidArgument", message: refusal.message, errno: refusal.errno }))
    const hit = this.overlaps.find(offset, length, ignore)
    if (hit === undefined) return Effect.void
    return this.markCorrupt(`Preventing invalid write on metadata (overlaps with ${hit})`, offset)
  }

  /** Whether `guardWrite(offset, length)` would let the write through (checked without an Effect). */
  mayWriteNow(offset: number, length: number): boolean {
    return this.overlaps.inactiveL2Refusal === undefined && this.overlaps.find(offset, length, NO_KINDS) === undefined
  }

  /** Lazy refcounts: the dirty bit reaches disk before the first metadata change (QEMU's qcow2_mark_dirty). */
  beforeMetadataChange(): Effect.Effect<void, StorageError> {
    if (!this.lazyRefcounts || this.dirty || this.readOnly) return Effect.void
    return Effect.map(this.header.setIncompatible(IncompatibleFeature.Dirty, true), () => {
      this.dirty = true
    })
  }

  /** A clean close of a lazy-refcount image: refcounts are consistent again, the dirty bit goes. */
  markClean(): Effect.Effect<void, StorageError> {
    if (!this.lazyRefcounts || !this.dirty || this.corrupt || this.readOnly) return Effect.void
    return Effect.map(this.header.setIncompatible(IncompatibleFeature.Dirty, false), () => {
      this.dirty = false
    })
  }

  /** After a repair that left no corruption (QEMU's qcow2_mark_clean + qcow2_mark_consistent). */
  repaired(): Effect.Effect<void, StorageError> {
    return Effect.map(this.header.setIncompatible(IncompatibleFeature.Dirty | IncompatibleFeature.Corrupt, false), () => {
      this.corrupt = false
      this.dirty = false
    })
  }
}
