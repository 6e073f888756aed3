import { constants, createDeflateRaw, type DeflateRaw } from "node:zlib"
import type { ClusterCompressor } from "./clusterQueue.js"

/**
 * Deflate of one cluster with node:zlib, QEMU's parameters (raw deflate,
 * window 2^12, memLevel 9). Returns `undefined` when QEMU would store the
 * cluster uncompressed: QEMU deflates into a buffer of cluster_size - 1
 * bytes and zlib only reports Z_STREAM_END with at least one byte of that
 * buffer to spare, so the stream must be at most cluster_size - 2 bytes
 * (checked against zlib 1.2.13).
 *
 * Output is gathered in chunks of at most 16 KiB: zlib allocates a fresh
 * chunk per call, and the garbage left behind is external memory that V8
 * collects late (a pool worker held ~45 MiB of it with cluster-sized
 * chunks, ~15 MiB with 16 KiB ones); most clusters that compress fit one.
 */
export function nodeDeflateCluster(
  zlib: typeof import("node:zlib"),
  input: Uint8Array,
  level: number
): Uint8Array | undefined {
  const out = zlib.deflateRawSync(input, { level, windowBits: 12, memLevel: 9, chunkSize: Math.min(Math.max(input.length, 64), 16384) })
  if (out.length > input.length - 2) return undefined
  // An exact copy: `out` is a view on a cluster-sized chunk, and keeping thousands of
  // such views alive holds ~3x the memory and makes the GC work hard.
  return new Uint8Array(out)
}

/**
 * `nodeDeflateCluster` on libuv's thread pool, for one cluster after
 * another through one zlib stream (node:zlib's asynchronous API): same
 * parameters, same bytes, same "store uncompressed" rule, without a worker
 * thread (each costs a V8 isolate, ~25-45 MiB). The stream is reset after
 * each cluster (deflateReset), so its state and output buffer are reused
 * instead of allocated per cluster: the buffers node:zlib allocates are
 * external memory V8 collects late, and with a fresh stream per cluster
 * they added tens of MiB to a `convert -c`'s peak.
 */
export class AsyncClusterDeflater implements ClusterCompressor {
  private readonly stream: DeflateRaw
  private chunks: Array<Buffer> = []
  private failure: Error | undefined
  /** Whether the stream's output position can be set back (see `compress`). */
  private readonly rewindable: boolean
  /** The running job's callback, until it is called (by the write's callback or by the stream's error). */
  private pending: ((error: Error | undefined, length: number | undefined) => void) | undefined

  /**
   * `clusterSize`: the output buffer holds a whole cluster's stream when
   * it is worth keeping (shorter than the cluster), and every write
   * finishes the stream (Z_FINISH), so a cluster is one job on libuv's
   * thread pool.
   */
  constructor(
    readonly level: number,
    readonly clusterSize: number
  ) {
    this.stream = createDeflateRaw({ level, windowBits: 12, memLevel: 9, chunkSize: clusterSize + 1024, flush: constants.Z_FINISH })
    this.rewindable = typeof (this.stream as unknown as { _outOffset?: unknown })._outOffset === "number"
    this.stream.on("data", (chunk: Buffer) => this.chunks.push(chunk))
    this.stream.on("error", (error) => {
      this.failure = error
      this.finish(error, undefined)
    })
  }

  compress(input: Uint8Array, into: Uint8Array, done: (error: Error | undefined, length: number | undefined) => void): void {
    this.pending = done
    // The last cluster's output was copied out before its `done` ran: start
    // the output buffer over, so node:zlib fills the same buffer again
    // instead of allocating a fresh one every few clusters (it does once
    // the rest of the buffer is used up; ~60 MiB of garbage per 256 MiB
    // convert -c, which V8 frees late). Only where node:zlib keeps its
    // output position in `_outOffset`, as lib/zlib.js does since Node 10.
    if (this.rewindable) (this.stream as unknown as { _outOffset: number })._outOffset = 0
    this.stream.write(input, () => {
      const chunks = this.chunks
      this.chunks = []
      if (this.failure !== undefined) return this.finish(this.failure, undefined)
      this.stream.reset()
      let length = 0
      for (const chunk of chunks) length += chunk.length
      if (length > input.length - 2) return this.finish(undefined, undefined)
      let at = 0
      for (const chunk of chunks) {
        into.set(chunk, at)
        at += chunk.length
      }
      this.finish(undefined, length)
    })
  }

  private finish(error: Error | undefined, length: number | undefined): void {
    const done = this.pending
    this.pending = undefined
    done?.(error, length)
  }

  get broken(): boolean {
    return this.failure !== undefined
  }

  close(): void {
    this.stream.destroy()
  }
}
