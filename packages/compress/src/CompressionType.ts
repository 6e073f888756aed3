/**
 * The header's `compression_type` byte (qcow2.txt, header offset 104):
 * 0 = deflate (raw RFC 1951, called "zlib" by qemu-img), 1 = zstd (RFC 8878).
 */
export type CompressionType = 0 | 1

/** The `compression_type` values by name. */
export const CompressionType = {
  Deflate: 0,
  Zstd: 1
} as const satisfies Record<string, CompressionType>

/** Smallest and largest cluster sizes QEMU accepts (cluster_bits 9..21). */
const MIN_CLUSTER_SIZE = 512
const MAX_CLUSTER_SIZE = 2 * 1024 * 1024

/** Default levels: zlib's Z_DEFAULT_COMPRESSION (6) and ZSTD_CLEVEL_DEFAULT (3), as QEMU uses. */
export const DEFAULT_DEFLATE_LEVEL = 6
/** zstd's level when none is given (ZSTD_CLEVEL_DEFAULT, as QEMU). */
export const DEFAULT_ZSTD_LEVEL = 3

/** True for a power of two in 512 B..2 MiB. */
export const isClusterSize = (n: number): boolean =>
  Number.isInteger(n) && n >= MIN_CLUSTER_SIZE && n <= MAX_CLUSTER_SIZE && (n & (n - 1)) === 0
