import { Deferred, Effect } from "effect"
import { readL2EntryForIo, writeL2Entry } from "@qcow2/format"
import type { L2Entry } from "@qcow2/format"
import { debugPoint } from "@qcow2/storage"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { isKept, isOwned, prepareL2ForWrite, releaseReplaced, replacedHostRange } from "./l2.js"
import type { HostRange } from "./l2.js"
import { freeDamageMessage, isUnownedUnaligned, writeDamageMessage } from "./l2-damage.js"
import type { InvalidL2Entry } from "./l2-damage.js"
import { l2Coverage, l2TableOffset, loadL2 } from "./mapping.js"
import { readGuest } from "./read.js"
import { ALL_SUBCLUSTERS, copiedSubclusters, damagedInRun, subclusterRange } from "./subcluster-write.js"
import { linkNow, planWriteNow } from "./write-now.js"

/** What to do for the next part of a write, decided under the metadata lock (or without it, write-now.ts). */
export type WritePlan =
  | { readonly _tag: "Wait"; readonly done: Deferred.Deferred<void> }
  /** Clusters owned by this image alone (COPIED): write the data in place. */
  | { readonly _tag: "InPlace"; readonly hostOffset: number; readonly length: number }
  /** New host clusters (or new subclusters of an owned one): copy-on-write, then link. */
  | {
      readonly _tag: "Allocate"
      readonly length: number
      readonly firstCluster: number
      readonly clusters: number
      /** Host offset of the first cluster of the run. */
      readonly hostOffset: number
      /** Whether the host clusters were allocated here (freed again on failure). */
      readonly fresh: boolean
      /** Guest range [cowStart, cowEnd) written to the host: data plus copied head and tail. */
      readonly cowStart: number
      readonly cowEnd: number
      /** Extended L2: subcluster masks of the single cluster after the write. */
      readonly allocatedMask: number
      readonly zeroMask: number
      readonly release: Effect.Effect<void>
      /** Set once linking starts: from then on the clusters are not abandoned on failure. */
      readonly progress: { linked: boolean }
    }

/**
 * Writes guest bytes (spec "Cluster mapping"; QEMU's allocating write path).
 * Clusters this image owns (COPIED) are written in place. Others get new
 * host clusters: the untouched head and tail are copied from wherever the
 * old data lived (backing file, shared cluster, compressed cluster, zero),
 * the data reaches storage, and only then the L2 entries are linked and
 * what they replaced is freed. Data I/O runs outside the metadata lock; a
 * write that meets an allocation in flight waits for it and looks again.
 *
 * New clusters go right after the host bytes of the part before them when
 * those clusters are free (QEMU keeps one request's host range contiguous:
 * handle_alloc with the host offset handle_copied left), else wherever the
 * allocator finds room. Where they go matters beyond speed: it is the same
 * layout QEMU makes, and on an image whose refcounts undercount it is which
 * live clusters get overwritten.
 */
export function writeGuest(engine: Qcow2Engine, offset: number, data: Uint8Array, placed?: Deferred.Deferred<void>): Effect.Effect<void, EngineFailure> {
  if (data.length === 0) return Effect.void
  // Plain recursion instead of a generator: most writes are one step.
  const from = (done: number, after: number | undefined): Effect.Effect<void, EngineFailure> =>
    Effect.flatMap(writeStep(engine, offset + done, data.subarray(done), after, placed), (step) =>
      done + step.length < data.length ? from(done + step.length, step.hostEnd) : Effect.void
    )
  return from(0, undefined)
}

/** How far one step of a write got, and where its host bytes end (the next step continues there when it can). */
interface StepDone {
  readonly length: number
  readonly hostEnd: number
}

function writeStep(
  engine: Qcow2Engine,
  offset: number,
  data: Uint8Array,
  after: number | undefined,
  placed: Deferred.Deferred<void> | undefined
): Effect.Effect<StepDone, EngineFailure> {
  return Effect.suspend(() => {
    const refused = engine.integrity.refuseWrite(offset)
    if (refused !== undefined) return refused
    // A plan holds something until it is carried out: an in-place plan
    // counts as a direct write from the moment it is made until its data
    // is written (see InFlightAllocations), an allocation is registered in
    // flight and its clusters are given back if it fails before linking.
    const step = Effect.acquireUseRelease(
      Effect.suspend(() => {
        const now = planWriteNow(engine, offset, data.length, after)
        if (now === undefined) return engine.lock.withPermits(1)(planWrite(engine, offset, data, after))
        return Effect.isEffect(now) ? now : Effect.succeed(now)
      }),
      (plan) => {
        // The plan of the write's last part decides where its last clusters go.
        if (placed !== undefined && plan._tag !== "Wait" && plan.length === data.length) Deferred.doneUnsafe(placed, Effect.void)
        return performPlan(engine, offset, data, plan)
      },
      (plan, exit) => {
        switch (plan._tag) {
          case "Wait":
            return Effect.void
          case "InPlace":
            return Effect.sync(() => engine.inflight.endDirect())
          case "Allocate":
            return exit._tag === "Success" ? plan.release : Effect.andThen(abandon(engine, plan), plan.release)
        }
      }
    )
    // After waiting for an allocation in flight: plan again.
    return Effect.flatMap(step, (done) => (done === undefined ? writeStep(engine, offset, data, after, placed) : Effect.succeed(done)))
  })
}

/** Carries out a plan; undefined after waiting for an allocation in flight (plan again). */
function performPlan(engine: Qcow2Engine, offset: number, data: Uint8Array, plan: WritePlan): Effect.Effect<StepDone | undefined, EngineFailure> {
  switch (plan._tag) {
    case "Wait":
      // As QEMU restarts the requests that depended on an allocation: once the one that made it has gone on.
      return Effect.as(Effect.andThen(Deferred.await(plan.done), Effect.yieldNow), undefined)
    case "InPlace":
      return Effect.as(Effect.andThen(debugPoint(engine.storage, "write_aio"), writeData(engine, offset, plan.hostOffset, data.subarray(0, plan.length))), {
        length: plan.length,
        hostEnd: plan.hostOffset + plan.length
      })
    case "Allocate":
      return Effect.as(performAllocation(engine, offset, data, plan), {
        length: plan.length,
        hostEnd: plan.hostOffset + (offset - plan.firstCluster * engine.geometry.clusterSize) + plan.length
      })
  }
}

/**
 * Encrypted data is written in pieces of at most this many bytes through
 * one bounce buffer (the caller's bytes stay as they are), as QEMU bounces
 * at most QCOW_MAX_CRYPT_CLUSTERS (32) clusters at a time: a 256 MiB write
 * no longer holds a 256 MiB encrypted copy.
 */
const ENCRYPT_PIECE = 2 * 1024 * 1024

/** Writes data bytes to the data file, encrypting first when the image is encrypted. */
export function writeData(engine: Qcow2Engine, guestOffset: number, hostOffset: number, data: Uint8Array): Effect.Effect<void, EngineFailure> {
  // An external data file is a raw node to QEMU, which raises write_aio on its own file.
  if (engine.externalData) engine.data.debugEvent?.("write_aio")
  const crypto = engine.crypto
  if (crypto === undefined) return engine.data.write(hostOffset, data)
  if (hostOffset % 512 !== 0 || data.length % 512 !== 0) {
    return Effect.die(new ClusterError({ reason: "InvalidArgument", message: "encrypted writes must be whole 512-byte sectors" }))
  }
  const ivBase = crypto.ivFrom === "host" ? hostOffset : guestOffset
  if (data.length <= ENCRYPT_PIECE) {
    const copy = data.slice()
    crypto.encrypt(ivBase, copy)
    return engine.data.write(hostOffset, copy)
  }
  return Effect.suspend(() => {
    const bounce = new Uint8Array(ENCRYPT_PIECE)
    let done = 0
    return Effect.whileLoop({
      while: () => done < data.length,
      body: () => {
        const length = Math.min(ENCRYPT_PIECE, data.length - done)
        const piece = bounce.subarray(0, length)
        piece.set(data.subarray(done, done + length))
        crypto.encrypt(ivBase + done, piece)
        return engine.data.write(hostOffset + done, piece)
      },
      step: () => {
        done += ENCRYPT_PIECE
      }
    })
  })
}

/** `after`: host offset just past the previous part of this write, where new clusters go first if free. */
function planWrite(engine: Qcow2Engine, offset: number, data: Uint8Array, after: number | undefined): Effect.Effect<WritePlan, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const cs = g.clusterSize
    const coverage = l2Coverage(engine)
    const tableEnd = (Math.floor(offset / coverage) + 1) * coverage
    const length = Math.min(data.length, tableEnd - offset)
    const firstCluster = Math.floor(offset / cs)
    const lastCluster = Math.floor((offset + length - 1) / cs)
    const waiting = engine.inflight.overlapping(firstCluster, lastCluster)
    if (waiting !== undefined) return { _tag: "Wait", done: waiting } as const

    const l2Offset = yield* prepareL2ForWrite(engine, offset)
    const table = yield* loadL2(engine, l2Offset)
    const firstIndex = firstCluster % g.l2Entries
    const inCluster = offset - firstCluster * cs
    const entry = readL2EntryForIo(table, firstIndex, g)
    const damaged = (bad: InvalidL2Entry, index: number) => engine.integrity.markCorrupt(writeDamageMessage(bad, { l2Offset, index }, offset), offset)

    if (!g.extendedL2) {
      // An unaligned cluster the image does not own, written whole, gets a
      // new host cluster without being read (QEMU: no copy-on-write, and the
      // free of the old offset is non-fatal); written in part, its
      // copy-on-write read would fail, so it fails here, before anything is
      // allocated.
      if (entry._tag === "Invalid" && !(isUnownedUnaligned(entry) && inCluster === 0 && length >= cs)) return yield* damaged(entry, firstIndex)
      if (isKept(engine, entry)) {
        // Extend over following kept clusters that are contiguous on the host.
        const host = entry.hostOffset
        let clusters = 1
        let zeros = entry._tag === "Zero"
        while (firstCluster + clusters <= lastCluster) {
          const next = readL2EntryForIo(table, firstIndex + clusters, g)
          if (!isKept(engine, next) || next.hostOffset !== host + clusters * cs) break
          zeros ||= next._tag === "Zero"
          clusters++
        }
        const bytes = Math.min(length, clusters * cs - inCluster)
        if (!zeros) return yield* inPlace(engine, host + inCluster, bytes)
        // Preallocated zero clusters among them: their untouched parts are
        // written as the zeros they read as, then all become normal clusters
        // (QEMU's keep_old_clusters allocation).
        const touched = Math.ceil((inCluster + bytes) / cs)
        const last = readL2EntryForIo(table, firstIndex + touched - 1, g)
        return yield* allocate(engine, {
          offset,
          length: bytes,
          firstCluster,
          clusters: touched,
          cowStart: entry._tag === "Zero" ? firstCluster * cs : offset,
          cowEnd: last._tag === "Zero" ? (firstCluster + touched) * cs : offset + bytes,
          existingHost: host,
          after,
          allocatedMask: ALL_SUBCLUSTERS,
          zeroMask: 0
        })
      }
      // Damaged entries join the run only where they are written whole (see above).
      const joins = (next: L2Entry, cluster: number) =>
        next._tag === "Invalid" ? isUnownedUnaligned(next) && offset + length >= (cluster + 1) * cs : !isKept(engine, next)
      let clusters = 1
      while (firstCluster + clusters <= lastCluster && joins(readL2EntryForIo(table, firstIndex + clusters, g), firstCluster + clusters)) clusters++
      const bytes = Math.min(length, clusters * cs - inCluster)
      return yield* allocate(engine, {
        offset,
        length: bytes,
        firstCluster,
        clusters,
        cowStart: firstCluster * cs,
        cowEnd: (firstCluster + clusters) * cs,
        existingHost: undefined,
        after,
        allocatedMask: ALL_SUBCLUSTERS,
        zeroMask: 0
      })
    }

    // Extended L2: one cluster per step, subcluster granularity.
    if (entry._tag === "Invalid") return yield* damaged(entry, firstIndex)
    const bytes = Math.min(length, cs - inCluster)
    const scs = g.subclusterSize
    const firstSub = Math.floor(inCluster / scs)
    const lastSub = Math.floor((inCluster + bytes - 1) / scs)
    const touched = subclusterRange(firstSub, lastSub)
    const clusterStart = firstCluster * cs
    // A cluster of this image's own (in place where every touched subcluster
    // is allocated), or one with no host cluster yet: subcluster granularity.
    const ownedHost = entry._tag === "Subclusters" && isOwned(engine, entry) ? entry.hostOffset : undefined
    const inRun = damagedInRun(engine, table, firstIndex, lastCluster - firstCluster + 1, ownedHost)
    if (inRun !== undefined) return yield* damaged(inRun.entry, inRun.index)
    // Clusters needing a new host cluster in a row are allocated together
    // (QEMU's handle_alloc), though written one per step here.
    let together = 1
    if (ownedHost === undefined) {
      while (firstCluster + together <= lastCluster && !isOwned(engine, readL2EntryForIo(table, firstIndex + together, g))) together++
    }
    if (ownedHost !== undefined && ((entry as { allocatedMask: number }).allocatedMask & touched) >>> 0 === touched) {
      return yield* inPlace(engine, ownedHost + inCluster, bytes)
    }
    const copied = copiedSubclusters(engine, entry, firstSub, lastSub)
    const range = subclusterRange(copied.first, copied.last)
    return yield* allocate(engine, {
      offset,
      length: bytes,
      firstCluster,
      clusters: 1,
      cowStart: clusterStart + copied.first * scs,
      cowEnd: clusterStart + (copied.last + 1) * scs,
      existingHost: ownedHost,
      after,
      together,
      allocatedMask: (copied.allocatedMask | range) >>> 0,
      zeroMask: (copied.zeroMask & ~range) >>> 0
    })
  })
}

/** An in-place plan, counted as a direct write in flight (the caller ends it). */
function inPlace(engine: Qcow2Engine, hostOffset: number, length: number): Effect.Effect<WritePlan, EngineFailure> {
  const plan: WritePlan = { _tag: "InPlace", hostOffset, length }
  const begin = Effect.sync(() => {
    engine.inflight.beginDirect()
    return plan
  })
  if (engine.externalData) return begin
  return Effect.andThen(engine.integrity.guardWrite(hostOffset, length), begin)
}

interface AllocationRequest {
  readonly offset: number
  readonly length: number
  readonly firstCluster: number
  readonly clusters: number
  readonly cowStart: number
  readonly cowEnd: number
  readonly existingHost: number | undefined
  /** Host offset to continue at when the clusters there are free (see writeGuest). */
  readonly after: number | undefined
  /**
   * Extended L2 (one cluster per step): how many clusters in a row need a
   * new host cluster. They are allocated together, as QEMU does, for the
   * same layout; those past this step's are given back at once, for the
   * next steps to take again right after it.
   */
  readonly together?: number
  readonly allocatedMask: number
  readonly zeroMask: number
}

function allocate(engine: Qcow2Engine, request: AllocationRequest): Effect.Effect<WritePlan, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    let hostOffset: number
    let fresh = false
    let clusters = request.clusters
    let length = request.length
    let cowEnd = request.cowEnd
    if (request.existingHost !== undefined) {
      hostOffset = request.existingHost
      if (!engine.externalData) yield* engine.integrity.guardWrite(hostOffset, clusters * cs)
    } else if (engine.externalData) {
      // Spec "External data file": guest offset == host offset in the data file.
      hostOffset = request.firstCluster * cs
    } else {
      const wanted = Math.max(clusters, request.together ?? 1)
      const after = request.after
      let at = after !== undefined && after % cs === 0 ? yield* engine.refcounts.allocateAt(after / cs, wanted) : 0
      if (after !== undefined && at > clusters) {
        yield* engine.refcounts.giveBack(after + clusters * cs, (at - clusters) * cs)
        at = clusters
      }
      if (at > 0) {
        // Only the clusters free there: the rest of the write is a later step.
        hostOffset = request.after as number
        clusters = at
        const runEnd = (request.firstCluster + clusters) * cs
        length = Math.min(length, runEnd - request.offset)
        cowEnd = Math.min(cowEnd, runEnd)
      } else {
        hostOffset = yield* engine.refcounts.allocate(wanted)
        if (wanted > clusters) yield* engine.refcounts.giveBack(hostOffset + clusters * cs, (wanted - clusters) * cs)
      }
      fresh = true
      yield* engine.integrity.guardWrite(hostOffset, clusters * cs)
    }
    const release = yield* engine.inflight.register(request.firstCluster, request.firstCluster + clusters - 1)
    return {
      _tag: "Allocate",
      length,
      firstCluster: request.firstCluster,
      clusters,
      hostOffset,
      fresh,
      cowStart: request.cowStart,
      cowEnd: Math.max(cowEnd, request.offset + length),
      allocatedMask: request.allocatedMask,
      zeroMask: request.zeroMask,
      release,
      progress: { linked: false }
    } as const
  })
}

/** Copy-on-write outside the lock, then link the L2 entries under it. */
function performAllocation(
  engine: Qcow2Engine,
  offset: number,
  data: Uint8Array,
  plan: Extract<WritePlan, { _tag: "Allocate" }>
): Effect.Effect<void, EngineFailure> {
  const head = offset - plan.cowStart
  const tailStart = offset + plan.length
  if (head === 0 && tailStart === plan.cowEnd && engine.storage.debugEvent === undefined && engine.storage.debugBreak === undefined) {
    // Nothing to copy and no debug points to raise: the data, then the entries.
    const runStart = plan.firstCluster * engine.geometry.clusterSize
    return Effect.andThen(
      writeData(engine, plan.cowStart, plan.hostOffset + (plan.cowStart - runStart), data.subarray(0, plan.length)),
      Effect.suspend(() => {
        plan.progress.linked = true
        return linkNow(engine, plan) ? Effect.void : engine.lock.withPermits(1)(link(engine, plan))
      })
    )
  }
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    const runStart = plan.firstCluster * cs
    let buffer: Uint8Array
    if (head === 0 && tailStart === plan.cowEnd) {
      buffer = data.subarray(0, plan.length)
    } else {
      buffer = new Uint8Array(plan.cowEnd - plan.cowStart)
      yield* debugPoint(engine.storage, "cow_read")
      // QEMU's do_perform_cow_read: a fatal corruption event while the request waited took the image out of service.
      const gone = engine.requireMedium()
      if (gone !== undefined) return yield* gone
      if (head > 0) yield* readGuest(engine, plan.cowStart, buffer.subarray(0, head))
      buffer.set(data.subarray(0, plan.length), head)
      if (tailStart < plan.cowEnd) yield* readGuest(engine, tailStart, buffer.subarray(tailStart - plan.cowStart))
    }
    // QEMU raises both when the guest data and the copied parts go out in one request.
    yield* debugPoint(engine.storage, "write_aio")
    if (buffer.length !== plan.length) yield* debugPoint(engine.storage, "cow_write")
    yield* writeData(engine, plan.cowStart, plan.hostOffset + (plan.cowStart - runStart), buffer)
    plan.progress.linked = true
    if (!linkNow(engine, plan)) yield* engine.lock.withPermits(1)(link(engine, plan))
  })
}

/**
 * Points the L2 entries at the new clusters and frees what they replaced.
 * Rule 1 was declared when the clusters were allocated, rule 3 is declared
 * by the free; rule 2 is this function's: the data (and the copied head and
 * tail) is durable before the L2 entry that makes it visible.
 */
function link(engine: Qcow2Engine, plan: Extract<WritePlan, { _tag: "Allocate" }>): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const cs = g.clusterSize
    const guest = plan.firstCluster * cs
    const l2Offset = yield* l2TableOffset(engine, guest)
    if (l2Offset === 0) return yield* engine.integrity.markCorrupt(`L2 table for guest offset ${guest} vanished during a write`, guest)
    const table = yield* loadL2(engine, l2Offset)
    const firstIndex = plan.firstCluster % g.l2Entries
    const replaced: HostRange[] = []
    for (let i = 0; i < plan.clusters; i++) {
      const old = readL2EntryForIo(table, firstIndex + i, g)
      const host = plan.hostOffset + i * cs
      if (g.extendedL2) {
        writeL2Entry(table, firstIndex + i, { _tag: "Subclusters", hostOffset: host, copied: true, allocatedMask: plan.allocatedMask, zeroMask: plan.zeroMask }, g)
      } else {
        writeL2Entry(table, firstIndex + i, { _tag: "Normal", hostOffset: host, copied: true }, g)
      }
      // A damaged entry written over (planWrite): its offset is not freed (QEMU's qcow2_free_any_cluster).
      if (old._tag === "Invalid") engine.integrity.reportNonFatal(freeDamageMessage(old))
      const range = replacedHostRange(engine, old, host)
      if (range !== undefined) replaced.push(range)
    }
    engine.l2Cache.markDirty(l2Offset)
    engine.l2Cache.dependOnStorageFlush()
    yield* releaseReplaced(engine, replaced)
  })
}

/**
 * A failed allocating write: give back clusters that were never linked.
 * Not once a fatal corruption event took the image out of service: QEMU
 * then writes no metadata any more (its caches are dropped with the
 * driver), and giving back could write a refcount block that also holds
 * other requests' unlinked allocations.
 */
function abandon(engine: Qcow2Engine, plan: Extract<WritePlan, { _tag: "Allocate" }>): Effect.Effect<void> {
  if (!plan.fresh || plan.progress.linked || engine.integrity.ejected) return Effect.void
  return engine.lock
    .withPermits(1)(engine.refcounts.free(plan.hostOffset, plan.clusters * engine.geometry.clusterSize))
    .pipe(Effect.ignore)
}

/**
 * Writes guest bytes of any alignment. Encrypted data is ciphered in whole
 * 512-byte sectors, so a write that does not cover whole sectors reads the
 * sectors it touches, patches them and writes them back, one at a time
 * (`sectorLock`). `placed` is completed when the plan of the write's last
 * part is made under the metadata lock (its host clusters are then
 * allocated, the data not yet written); a read-modify-write of sectors
 * leaves it to the caller.
 */
export function writeBytes(engine: Qcow2Engine, offset: number, data: Uint8Array, placed?: Deferred.Deferred<void>): Effect.Effect<void, EngineFailure> {
  if (engine.crypto === undefined || (offset % 512 === 0 && data.length % 512 === 0)) return writeGuest(engine, offset, data, placed)
  return engine.sectorLock.withPermits(1)(
    Effect.gen(function* () {
      const start = Math.floor(offset / 512) * 512
      const end = Math.min(Math.ceil((offset + data.length) / 512) * 512, Math.ceil(engine.header.size / 512) * 512)
      const buffer = new Uint8Array(end - start)
      yield* readGuest(engine, start, buffer)
      buffer.set(data, offset - start)
      yield* writeGuest(engine, start, buffer)
    })
  )
}
