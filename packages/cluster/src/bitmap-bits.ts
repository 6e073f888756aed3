/**
 * Bits of one dirty bitmap in memory, laid out as qcow2 stores them
 * (qcow2.txt "Bitmap data"): bit i covers guest bytes
 * [i * granularity, (i + 1) * granularity) and is bit i % 8 of byte i / 8.
 * Plain functions over a Uint8Array: the write path calls `setRange` once
 * per request and bitmap, so it touches only the bytes it changes.
 */

/** Sets bits first..last (inclusive). */
export function setBits(bits: Uint8Array, first: number, last: number): void {
  if (last < first) return
  const firstByte = first >>> 3
  const lastByte = last >>> 3
  const head = (0xff << (first & 7)) & 0xff
  const tail = 0xff >>> (7 - (last & 7))
  if (firstByte === lastByte) {
    bits[firstByte]! |= head & tail
    return
  }
  bits[firstByte]! |= head
  if (lastByte > firstByte + 1) bits.fill(0xff, firstByte + 1, lastByte)
  bits[lastByte]! |= tail
}

/** Marks guest bytes [offset, offset + length) dirty in a bitmap of 2^granularityBits bytes per bit. */
export function markRange(bits: Uint8Array, granularity: number, offset: number, length: number): void {
  if (length <= 0) return
  setBits(bits, Math.floor(offset / granularity), Math.floor((offset + length - 1) / granularity))
}

/** Whether bit i is set. */
export const bitSet = (bits: Uint8Array, i: number): boolean => ((bits[i >>> 3]! >>> (i & 7)) & 1) !== 0

/**
 * Whether any byte of bits[from, to) is non-zero. Scans 32-bit words where
 * it can: a 2 TiB image at 512-byte granularity has a 512 MiB bitmap,
 * scanned once per store.
 */
export function anySet(bits: Uint8Array, from: number, to: number): boolean {
  let i = from
  for (; i < to && ((bits.byteOffset + i) & 3) !== 0; i++) if (bits[i] !== 0) return true
  const words = (to - i) >>> 2
  if (words > 0) {
    const view = new Int32Array(bits.buffer, bits.byteOffset + i, words)
    for (let w = 0; w < words; w++) if (view[w] !== 0) return true
    i += words * 4
  }
  for (; i < to; i++) if (bits[i] !== 0) return true
  return false
}

/**
 * Guest byte ranges the set bits of `bits` cover, merged where adjacent,
 * clipped to `size` (QEMU's hbitmap_next_dirty_area walk).
 */
export function* dirtyRanges(bits: Uint8Array, granularity: number, size: number): Generator<{ readonly offset: number; readonly length: number }> {
  const count = Math.ceil(size / granularity)
  let i = 0
  while (i < count) {
    const byte = bits[i >>> 3]!
    if (byte === 0 && (i & 7) === 0) {
      i += 8
      continue
    }
    if (!bitSet(bits, i)) {
      i++
      continue
    }
    let j = i + 1
    while (j < count && bitSet(bits, j)) j++
    const offset = i * granularity
    yield { offset, length: Math.min(size, j * granularity) - offset }
    i = j
  }
}

/**
 * Sets in `into` every bit covering a byte that is dirty in `from`
 * (QEMU's hbitmap_merge: a plain OR at equal granularity, else range by range).
 */
export function mergeBits(into: Uint8Array, intoGranularity: number, from: Uint8Array, fromGranularity: number, size: number): void {
  if (intoGranularity === fromGranularity) {
    const n = Math.min(into.length, from.length)
    for (let i = 0; i < n; i++) into[i]! |= from[i]!
    return
  }
  for (const r of dirtyRanges(from, fromGranularity, size)) markRange(into, intoGranularity, r.offset, r.length)
}

/**
 * The bitmap resized to cover `size` bytes: new bits clear, bits past the
 * new end dropped (QEMU's hbitmap_truncate). `bytes` is the serialised length.
 */
export function resizeBits(bits: Uint8Array, granularity: number, size: number, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes)
  out.set(bits.subarray(0, Math.min(bits.length, bytes)))
  const count = Math.ceil(size / granularity)
  if ((count & 7) !== 0 && count >>> 3 < out.length) out[count >>> 3]! &= 0xff >>> (8 - (count & 7))
  const clearFrom = Math.ceil(count / 8)
  if (clearFrom < out.length) out.fill(0, clearFrom)
  return out
}

/**
 * The bits of one bitmap, and for each cluster of its serialised data (one
 * bitmap table entry) whether a bit may be set there, so that storing a
 * large, mostly clean bitmap looks only at the clusters writes touched.
 */
export class BitmapBits {
  /** 1 where the cluster may hold a set bit, 0 where it is known clear. */
  readonly chunks: Uint8Array
  private readonly bitsPerChunk: number

  constructor(
    readonly bits: Uint8Array,
    readonly granularity: number,
    private readonly clusterSize: number,
    chunks?: Uint8Array
  ) {
    this.bitsPerChunk = clusterSize * 8
    this.chunks = chunks ?? new Uint8Array(Math.ceil(bits.length / clusterSize))
  }

  /** Marks guest bytes [offset, offset + length) dirty. */
  mark(offset: number, length: number): void {
    if (length <= 0) return
    const first = Math.floor(offset / this.granularity)
    const last = Math.floor((offset + length - 1) / this.granularity)
    setBits(this.bits, first, last)
    this.chunks.fill(1, Math.floor(first / this.bitsPerChunk), Math.floor(last / this.bitsPerChunk) + 1)
  }

  clear(): void {
    this.bits.fill(0)
    this.chunks.fill(0)
  }

  /** ORs in another bitmap's bits (see mergeBits); the cluster marks are recomputed. */
  merge(from: Uint8Array, fromGranularity: number, size: number): void {
    mergeBits(this.bits, this.granularity, from, fromGranularity, size)
    this.rescan()
  }

  /** The bits for a new virtual size (see resizeBits). */
  resized(size: number, bytes: number): BitmapBits {
    const out = new BitmapBits(resizeBits(this.bits, this.granularity, size, bytes), this.granularity, this.clusterSize)
    out.rescan()
    return out
  }

  /** Whether cluster `i` of the serialised data has a set bit. */
  clusterDirty(i: number): boolean {
    if (this.chunks[i] === 0) return false
    const from = i * this.clusterSize
    return anySet(this.bits, from, Math.min(this.bits.length, from + this.clusterSize))
  }

  private rescan(): void {
    for (let i = 0; i < this.chunks.length; i++) {
      const from = i * this.clusterSize
      this.chunks[i] = anySet(this.bits, from, Math.min(this.bits.length, from + this.clusterSize)) ? 1 : 0
    }
  }
}
