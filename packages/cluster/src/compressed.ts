import { Effect } from "effect"
import { debugPoint } from "@qcow2/storage"
import { readL2EntryForIo, writeL2Entry } from "@qcow2/format"
import type { Qcow2Engine } from "./Engine.js"
import { ClusterError } from "./errors.js"
import type { EngineFailure } from "./errors.js"
import { hasHostData, prepareL2ForWrite } from "./l2.js"
import { readDamageMessage } from "./l2-damage.js"
import { l2Coverage, loadL2 } from "./mapping.js"
import { writeGuest } from "./write.js"

/**
 * Writes whole clusters compressed (spec "Compressed Clusters"; qemu-io
 * `write -c`). Each cluster is compressed with the image's compression
 * type; one that does not shrink is written as a normal cluster, as QEMU
 * does. Compressed data is packed at byte granularity. The range must be
 * cluster aligned (the last cluster may end at the image end), and the
 * clusters must not hold data yet (QEMU: "Compression can't overwrite
 * anything", EIO).
 */
export function writeCompressedClusters(engine: Qcow2Engine, offset: number, data: Uint8Array): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    if (engine.externalData) {
      return yield* new ClusterError({ reason: "Unsupported", message: "compressed writes are not possible with an external data file" })
    }
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== engine.header.size)) {
      return yield* new ClusterError({
        reason: "InvalidArgument",
        message: `compressed writes must cover whole clusters (${cs} bytes) at cluster-aligned offsets`,
        offset,
        errno: "EINVAL"
      })
    }
    // Compress every cluster of the request at once (a worker pool runs them
    // in parallel), then store them in guest order.
    const count = Math.ceil(data.length / cs)
    if (count === 0) return
    const whole = data.length === count * cs ? data : padded(data, count * cs)
    const batch = engine.codec.compressClusters
    if (batch !== undefined) return yield* batch(whole, cs, (results) => storeResults(engine, offset, data, results))
    const results = yield* Effect.forEach(
      Array.from({ length: count }, (_, k) => k * cs),
      (start) => engine.codec.compress(whole.subarray(start, start + cs)),
      { concurrency: "unbounded" }
    )
    yield* storeResults(engine, offset, data, results)
  })
}

/** `data` followed by zeros up to `length` bytes (a last cluster cut by the image end). */
const padded = (data: Uint8Array, length: number): Uint8Array => {
  const whole = new Uint8Array(length)
  whole.set(data)
  return whole
}

/**
 * Stores the compressed `results` of the clusters of `data` (from guest
 * `offset` on): each run of clusters that did shrink is stored together,
 * one storage write per stretch of contiguous host bytes instead of one
 * per cluster; a run of clusters that did not shrink is written as normal
 * clusters, in one write.
 */
function storeResults(
  engine: Qcow2Engine,
  offset: number,
  data: Uint8Array,
  results: ReadonlyArray<Uint8Array | undefined>
): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const cs = engine.geometry.clusterSize
    let i = 0
    while (i < results.length) {
      const guest = offset + i * cs
      let j = i
      if (results[i] === undefined) {
        // A run of clusters that did not shrink: one plain write.
        while (j + 1 < results.length && results[j + 1] === undefined) j++
        yield* writeGuest(engine, guest, data.subarray(i * cs, Math.min((j + 1) * cs, data.length)))
        i = j + 1
        continue
      }
      while (j + 1 < results.length && results[j + 1] !== undefined) j++
      const run = results.slice(i, j + 1) as Array<Uint8Array>
      yield* engine.inflight.whenSettled(engine.lock, guest / cs, guest / cs + run.length - 1, storeCompressed(engine, guest, run))
      i = j + 1
    }
  })
}

/** Where one compressed cluster of a run goes. */
interface Placement {
  readonly l2Offset: number
  readonly index: number
  readonly host: number
  readonly bytes: Uint8Array
}

/**
 * Stores the compressed clusters `run` (guest clusters from `guest` on)
 * and links them. Call with the lock held. Bytes are allocated cluster by
 * cluster (each one references the host clusters it touches, as QEMU
 * counts them), written in one request per stretch of contiguous host
 * bytes, and linked once written.
 */
function storeCompressed(engine: Qcow2Engine, guest: number, run: ReadonlyArray<Uint8Array>): Effect.Effect<void, EngineFailure> {
  return Effect.gen(function* () {
    const g = engine.geometry
    const placed: Array<Placement> = []
    for (let k = 0; k < run.length; k++) {
      const at = guest + k * g.clusterSize
      const refused = engine.integrity.refuseWrite(at)
      if (refused !== undefined) return yield* refused
      // Each step runs without an Effect when what it needs is in memory (an
      // owned, cached L2 table; bytes packed after the previous cluster): a
      // 1 GiB convert -c stores ~10,000 clusters one after another.
      const l2Offset = engine.l1.plainL2Offset(Math.floor(at / l2Coverage(engine)), true) ?? (yield* prepareL2ForWrite(engine, at))
      const index = (at / g.clusterSize) % g.l2Entries
      const old = readL2EntryForIo(engine.l2Cache.lookup(l2Offset) ?? (yield* loadL2(engine, l2Offset)), index, g)
      if (old._tag === "Invalid") return yield* engine.integrity.markCorrupt(readDamageMessage(old, { l2Offset, index }), at)
      if (hasHostData(engine, old) || (old._tag === "Subclusters" && old.allocatedMask !== 0)) {
        return yield* new ClusterError({
          reason: "InvalidArgument",
          message: `cannot write a compressed cluster over allocated data at guest offset ${at}`,
          offset: at,
          errno: "EIO"
        })
      }
      const bytes = run[k]
      const host = engine.refcounts.allocateBytesNow(bytes.length) ?? (yield* engine.refcounts.allocateBytes(bytes.length))
      if (!engine.integrity.mayWriteNow(host, bytes.length)) yield* engine.integrity.guardWrite(host, bytes.length)
      placed.push({ l2Offset, index, host, bytes })
    }
    yield* debugPoint(engine.storage, "write_compressed")
    for (let a = 0; a < placed.length; ) {
      let b = a
      let end = placed[a].host + placed[a].bytes.length
      while (b + 1 < placed.length && placed[b + 1].host === end) end += placed[++b].bytes.length
      yield* engine.storage.write(placed[a].host, joinedBytes(placed, a, b, end - placed[a].host))
      a = b + 1
    }
    for (const p of placed) {
      const table = yield* loadL2(engine, p.l2Offset)
      writeL2Entry(table, p.index, { _tag: "Compressed", hostOffset: p.host, compressedSize: p.bytes.length }, g)
      engine.l2Cache.markDirty(p.l2Offset)
    }
    // Rule 2: the compressed bytes are durable before the entries.
    engine.l2Cache.dependOnStorageFlush()
    engine.decompressed.forget()
  })
}

/**
 * The bytes of placed[a..b] (contiguous on the host, `length` in all) as one
 * buffer: a view when they already lie one after another in the same memory
 * (a pool's packed batch), else a copy.
 */
function joinedBytes(placed: ReadonlyArray<Placement>, a: number, b: number, length: number): Uint8Array {
  const first = placed[a].bytes
  let adjacent = true
  for (let k = a + 1; k <= b && adjacent; k++) {
    const prev = placed[k - 1].bytes
    const bytes = placed[k].bytes
    adjacent = bytes.buffer === first.buffer && bytes.byteOffset === prev.byteOffset + prev.length
  }
  if (adjacent) return new Uint8Array(first.buffer, first.byteOffset, length)
  const joined = new Uint8Array(length)
  for (let k = a; k <= b; k++) joined.set(placed[k].bytes, placed[k].host - placed[a].host)
  return joined
}
