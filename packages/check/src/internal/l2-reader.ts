import { Effect } from "effect"
import type { StorageError } from "@qcow2/storage"
import { l1Entry } from "./entries.js"
import type { Pass } from "./pass.js"

/** Bytes of L2 tables fetched ahead at once. */
const L2_BATCH_BYTES = 8 << 20
/** Concurrent reads while fetching ahead. */
const L2_READ_CONCURRENCY = 8

/**
 * Reads the L2 tables of one L1 table in L1 order, fetching the next tables
 * (up to 8 MiB, at most 64) with a few concurrent reads, since a check is
 * bound by the latency of many small reads when clusters are small.
 */
export class L2Reader {
  private batch = new Map<number, Uint8Array>()

  constructor(
    private readonly p: Pass,
    private readonly l1: Uint8Array,
    private readonly l1Entries: number
  ) {}

  /** The table at `offset`, which is entry `index` of the L1 table. */
  read(index: number, offset: number): Effect.Effect<Uint8Array, StorageError> {
    const hit = this.batch.get(offset)
    if (hit !== undefined) return Effect.succeed(hit)
    const cs = this.p.img.clusterSize
    const limit = Math.max(1, Math.min(64, Math.floor(L2_BATCH_BYTES / cs)))
    const offsets: Array<number> = [offset]
    for (let j = index + 1; j < this.l1Entries && offsets.length < limit; j++) {
      const o = l1Entry(this.l1, j).l2Offset
      if (o !== 0 && o < this.p.img.fileSize && !offsets.includes(o)) offsets.push(o)
    }
    if (offsets.length === 1) return this.p.io.read(offset, cs)
    return Effect.forEach(offsets, (o) => this.p.io.read(o, cs), { concurrency: L2_READ_CONCURRENCY }).pipe(
      Effect.map((tables) => {
        this.batch = new Map(offsets.map((o, i) => [o, tables[i]!]))
        return tables[0]!
      })
    )
  }
}
