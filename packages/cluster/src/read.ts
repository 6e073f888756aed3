import { Effect } from "effect"
import type { ClusterContext, ClusterFailure } from "./context.js"
import { lookup, readCompressedCluster } from "./mapping.js"

/** The most recently decompressed cluster of each image, for sequential reads of compressed data. */
const lastDecompressed = new WeakMap<ClusterContext, { hostOffset: number; data: Uint8Array }>()

/** Forgets a cached decompressed cluster (its host bytes were freed or rewritten). */
export const forgetDecompressed = (ctx: ClusterContext): void => {
  lastDecompressed.delete(ctx)
}

/**
 * Reads guest bytes [offset, offset + into.length) of this layer, falling
 * through to the backing file for unallocated ranges (zeros past its end
 * or without one). Bytes past the virtual size read as zeros.
 */
export function readGuest(ctx: ClusterContext, offset: number, into: Uint8Array): Effect.Effect<void, ClusterFailure | unknown> {
  const inside = Math.max(0, Math.min(into.length, ctx.virtualSize - offset))
  if (inside < into.length) into.fill(0, inside)
  if (inside === 0) return Effect.void
  return Effect.gen(function* () {
    let done = 0
    while (done < inside) {
      const run = yield* lookup(ctx, offset + done, inside - done)
      const slice = into.subarray(done, done + run.length)
      switch (run.kind) {
        case "data":
          yield* readData(ctx, offset + done, run.hostOffset, slice)
          break
        case "zero":
          slice.fill(0)
          break
        case "unallocated":
          yield* readBacking(ctx, offset + done, slice)
          break
        case "compressed": {
          if (run.offsetInCluster === 0 && run.length === ctx.geometry.clusterSize) {
            // A whole cluster: decompress straight into the caller's buffer.
            yield* readCompressedCluster(ctx, run.hostOffset, run.compressedSize, slice)
            break
          }
          let cached = lastDecompressed.get(ctx)
          if (cached === undefined || cached.hostOffset !== run.hostOffset) {
            const data = new Uint8Array(ctx.geometry.clusterSize)
            yield* readCompressedCluster(ctx, run.hostOffset, run.compressedSize, data)
            cached = { hostOffset: run.hostOffset, data }
            lastDecompressed.set(ctx, cached)
          }
          slice.set(cached.data.subarray(run.offsetInCluster, run.offsetInCluster + run.length))
          break
        }
      }
      done += run.length
    }
  })
}

/** Reads guest bytes from the backing file; zeros past its end or without one. */
export function readBacking(ctx: ClusterContext, offset: number, into: Uint8Array): Effect.Effect<void, unknown> {
  const backing = ctx.backing
  if (backing === undefined) {
    into.fill(0)
    return Effect.void
  }
  const available = Math.max(0, Math.min(into.length, backing.size - offset))
  if (available < into.length) into.fill(0, available)
  if (available === 0) return Effect.void
  return backing.read(offset, available === into.length ? into : into.subarray(0, available))
}

/**
 * Reads data-cluster bytes, decrypting when the image is encrypted. Encrypted
 * data is handled in whole 512-byte sectors, so unaligned reads go through
 * a bounce buffer.
 */
export function readData(ctx: ClusterContext, guestOffset: number, hostOffset: number, into: Uint8Array): Effect.Effect<void, ClusterFailure> {
  const crypto = ctx.crypto
  if (crypto === undefined) return ctx.data.read(hostOffset, into)
  const head = hostOffset % 512
  const alignedHost = hostOffset - head
  const alignedLength = Math.ceil((head + into.length) / 512) * 512
  const aligned = head === 0 && alignedLength === into.length ? into : new Uint8Array(alignedLength)
  return Effect.map(ctx.data.read(alignedHost, aligned), () => {
    crypto.decrypt(crypto.ivFrom === "host" ? alignedHost : guestOffset - head, aligned)
    if (aligned !== into) into.set(aligned.subarray(head, head + into.length))
  })
}
