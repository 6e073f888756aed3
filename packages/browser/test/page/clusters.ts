import { patternBytes } from "@qcow2/storage/testing"

/**
 * `count` clusters of `size` bytes of mixed content, a quarter each:
 * random, repeated text, zeros, and 512-byte runs. The same bytes in the
 * page and in Node (the bench writes them to a raw file for qemu-img).
 */
export const mixedClusters = (count: number, size: number): Array<Uint8Array> =>
  Array.from({ length: count }, (_, i) => {
    switch (i % 4) {
      case 0:
        return patternBytes(size, i + 1)
      case 1:
        return new TextEncoder().encode(`cluster ${i} of a qcow2 image compressed in a browser worker. `.repeat(Math.ceil(size / 40))).subarray(0, size)
      case 2:
        return new Uint8Array(size)
      default:
        return Uint8Array.from({ length: size }, (_, j) => (j >> 9) & 0xff)
    }
  })
