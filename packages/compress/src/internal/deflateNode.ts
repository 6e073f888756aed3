/**
 * Deflate of one cluster with node:zlib, QEMU's parameters (raw deflate,
 * window 2^12, memLevel 9). Returns `undefined` when the result is not
 * smaller than the cluster by at least one byte (QEMU's rule: the
 * compressed form must fit in cluster_size - 1 bytes).
 *
 * Self-contained (zlib is passed in) so the compression pool can serialise
 * it into its worker code with `Function.prototype.toString`.
 */
export function nodeDeflateCluster(
  zlib: typeof import("node:zlib"),
  input: Uint8Array,
  level: number
): Uint8Array | undefined {
  const out = zlib.deflateRawSync(input, { level, windowBits: 12, memLevel: 9, chunkSize: Math.max(input.length, 64) })
  if (out.length > input.length - 1) return undefined
  return new Uint8Array(out.buffer, out.byteOffset, out.length)
}
