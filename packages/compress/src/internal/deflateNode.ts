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
 *
 * Self-contained (zlib is passed in) so the compression pool can serialise
 * it into its worker code with `Function.prototype.toString`.
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
