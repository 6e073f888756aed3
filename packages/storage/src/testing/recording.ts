import { Effect } from "effect"
import type { BlockStorageShape } from "../BlockStorage.js"
import { makeMemoryStorage } from "../memory.js"
import { ModelStore } from "./model.js"
import { seededRandom } from "./random.js"

/**
 * One mutating operation seen by a {@link CrashRecorder}, in the order the
 * operations completed. Only operations that succeeded are recorded.
 */
export type RecordedOperation =
  | { readonly _tag: "Write"; readonly offset: number; readonly data: Uint8Array }
  | { readonly _tag: "Resize"; readonly size: number }
  /** `zeroes`: the store's discard releases space, so the range reads as zeros. */
  | { readonly _tag: "Discard"; readonly offset: number; readonly length: number; readonly zeroes: boolean }
  /**
   * A flush that succeeded. It makes durable the operations that had
   * completed when it *started*: `operations()[0 .. durable)`. Operations
   * that completed while it was in flight are not covered by it.
   */
  | { readonly _tag: "Flush"; readonly durable: number }

/**
 * What happens to the operations after the last flush barrier at a crash:
 * - `"all"`: every one of them reached the disk (no reordering);
 * - `"none"`: none of them did (only flushed state survives);
 * - `{ seed }`: each one did with probability `probability` (default 0.5),
 *   chosen by a PRNG seeded with `seed`, in their original order. With
 *   `sector` set, a write that is kept may also be torn: each `sector`-aligned
 *   piece of it lands or not on its own (disks promise sector atomicity only).
 */
export type KeepUnflushed =
  | "none"
  | "all"
  | { readonly seed: number; readonly probability?: number; readonly sector?: number }

/** Which unflushed writes a simulated crash keeps. */
export interface CrashOptions {
  /** Default `"all"`. */
  readonly keepUnflushed?: KeepUnflushed
}

/**
 * A recording wrapper around a store, and the states a crash could leave.
 *
 * A "cut" is a point in `operations()`: cut `k` means the operations
 * `[0, k)` had completed when the machine crashed (`0 ≤ k ≤ length`). The
 * state after the crash keeps everything made durable by the flushes among
 * them, plus, depending on `keepUnflushed`, some of the rest.
 *
 * Typical use: run a workload on `storage`, then for every cut (or every
 * cut with a few seeds) open `storageAt(cut, …)` as an image and check that
 * it is consistent (DESIGN.md, "Consistency rules": a crash between flushes
 * may leak clusters, never corrupt).
 */
export interface CrashRecorder {
  /** Pass-through to the inner store that records writes, resizes, discards and flushes. */
  readonly storage: BlockStorageShape
  /** Everything recorded so far, in completion order. */
  readonly operations: () => ReadonlyArray<RecordedOperation>
  /** How many leading operations of cut `k` are durable (covered by a flush before `k`). */
  readonly durableAt: (cut: number) => number
  /** The bytes of the store after a crash at `cut` (a fresh copy). */
  readonly stateAt: (cut: number, options?: CrashOptions) => Uint8Array
  /** The state at `cut` as a fresh writable in-memory store, to reopen after the "crash". */
  readonly storageAt: (cut: number, options?: CrashOptions) => BlockStorageShape
}

/** Options of `makeCrashRecorder`. */
export interface CrashRecorderOptions {
  /**
   * The content `inner` holds when it is wrapped (default: empty). The
   * recorder replays operations on top of it; it does not read `inner`.
   */
  readonly initial?: Uint8Array
}

/**
 * Wraps `inner` so every successful write, resize, discard and flush is
 * recorded (writes keep a copy of their data, taken when the write starts).
 * Reads and size go straight to `inner`. Failed operations are not recorded.
 */
export const makeCrashRecorder = (inner: BlockStorageShape, options: CrashRecorderOptions = {}): CrashRecorder => {
  const initial = options.initial ?? new Uint8Array(0)
  const discardZeroes = inner.capabilities.discard
  const ops: Array<RecordedOperation> = []

  const storage: BlockStorageShape = {
    location: inner.location,
    capabilities: inner.capabilities,
    read: inner.read,
    size: inner.size,
    write: (offset, data) =>
      Effect.suspend(() => {
        const op: RecordedOperation = { _tag: "Write", offset, data: data.slice() }
        return Effect.map(inner.write(offset, data), () => {
          ops.push(op)
        })
      }),
    resize: (size) => Effect.map(inner.resize(size), () => {
      ops.push({ _tag: "Resize", size })
    }),
    discard: (offset, length) => Effect.map(inner.discard(offset, length), () => {
      ops.push({ _tag: "Discard", offset, length, zeroes: discardZeroes })
    }),
    flush: () =>
      Effect.suspend(() => {
        const durable = ops.length
        return Effect.map(inner.flush(), () => {
          ops.push({ _tag: "Flush", durable })
        })
      })
  }

  const checkCut = (cut: number): void => {
    if (!Number.isSafeInteger(cut) || cut < 0 || cut > ops.length) {
      throw new RangeError(`crash cut ${cut} is outside [0, ${ops.length}]`)
    }
  }

  const durableAt = (cut: number): number => {
    checkCut(cut)
    let durable = 0
    for (let i = 0; i < cut; i++) {
      const op = ops[i]
      if (op._tag === "Flush" && op.durable > durable) durable = op.durable
    }
    return durable
  }

  const apply = (model: ModelStore, op: RecordedOperation): void => {
    switch (op._tag) {
      case "Write":
        model.write(op.offset, op.data)
        break
      case "Resize":
        model.resize(op.size)
        break
      case "Discard":
        if (op.zeroes) model.zero(op.offset, op.length)
        break
      case "Flush":
        break
    }
  }

  const applyTorn = (model: ModelStore, op: RecordedOperation & { _tag: "Write" }, sector: number, next: () => number): void => {
    let pos = op.offset
    const end = op.offset + op.data.length
    while (pos < end) {
      const pieceEnd = Math.min(end, (Math.floor(pos / sector) + 1) * sector)
      if (next() % 2 === 0) model.write(pos, op.data.subarray(pos - op.offset, pieceEnd - op.offset))
      pos = pieceEnd
    }
  }

  const stateAt = (cut: number, crash: CrashOptions = {}): Uint8Array => {
    const durable = durableAt(cut)
    const keep = crash.keepUnflushed ?? "all"
    const model = new ModelStore(initial)
    const replayed = keep === "none" ? durable : cut
    if (typeof keep === "string") {
      for (let i = 0; i < replayed; i++) apply(model, ops[i])
      return model.contents()
    }
    const next = seededRandom(keep.seed)
    const threshold = Math.round((keep.probability ?? 0.5) * 0x1_0000_0000)
    for (let i = 0; i < durable; i++) apply(model, ops[i])
    for (let i = durable; i < cut; i++) {
      const op = ops[i]
      if (next() >= threshold) continue
      if (op._tag === "Write" && keep.sector !== undefined) applyTorn(model, op, keep.sector, next)
      else apply(model, op)
    }
    return model.contents()
  }

  return {
    storage,
    operations: () => ops,
    durableAt,
    stateAt,
    storageAt: (cut, crash) => makeMemoryStorage({ initial: stateAt(cut, crash), name: `${inner.location}@crash${cut}` })
  }
}
