/**
 * A zstd frame decoder in TypeScript (RFC 8878), for runtimes where the
 * libzstd wasm cannot be instantiated: V8 reserves ~10 GiB of address space
 * for every 32-bit wasm memory, which fails under an address-space limit
 * (`ulimit -v`). It decodes any frame without a dictionary (QEMU stores one
 * frame per cluster), checks content checksums (XXH64 with BigInt), and is
 * only used when the wasm cannot be instantiated: it is several times slower
 * (one run on a loaded machine, 64 KiB text clusters: 14 MB/s of output
 * against 52 for the wasm). Written from the RFC. One file on purpose: the
 * Huffman and FSE tables, literals and sequence execution of a block share
 * their state, and a split would only pass it around.
 *
 * Same contract as ZstdKernel.decompressFrame: decodes one frame (its exact
 * bytes) into `out`, returns the bytes written or a negated zstd error code:
 * -20 corruption_detected, -22 checksum_wrong, -70 dstSize_tooSmall (the
 * content does not fit in `out`), -32 dictionary_wrong.
 */
import { walkZstdFrame } from "../ZstdFrame.js"

const CORRUPTION = 20
const CHECKSUM_WRONG = 22
const DICTIONARY_WRONG = 32
const DST_SIZE_TOO_SMALL = 70

class ZstdFailure {
  constructor(readonly code: number) {}
}
const corrupt = (): never => {
  throw new ZstdFailure(CORRUPTION)
}

const BLOCK_SIZE_MAX = 128 * 1024

// ---------------------------------------------------------------------------
// Bit streams

/** Little-endian bit stream read forwards (FSE table descriptions, RFC 8878 4.1.1). */
class ForwardBits {
  bit = 0
  constructor(
    private readonly buf: Uint8Array,
    private readonly start: number,
    private readonly end: number
  ) {}
  /** The next `n` (<= 24) bits without consuming them; bits past the end read as 0. */
  peek(n: number): number {
    const byte = this.start + (this.bit >>> 3)
    const b = this.buf
    const w = (byte < this.end ? b[byte] : 0) |
      (byte + 1 < this.end ? b[byte + 1] << 8 : 0) |
      (byte + 2 < this.end ? b[byte + 2] << 16 : 0) |
      (byte + 3 < this.end ? b[byte + 3] << 24 : 0)
    return (w >>> (this.bit & 7)) & ((1 << n) - 1)
  }
  skip(n: number): void {
    this.bit += n
    if (this.start + Math.ceil(this.bit / 8) > this.end) corrupt()
  }
  read(n: number): number {
    const v = this.peek(n)
    this.skip(n)
    return v
  }
  /** Bytes consumed, rounded up. */
  bytes(): number {
    return Math.ceil(this.bit / 8)
  }
}

/**
 * Bit stream read backwards (Huffman streams, FSE-coded weights and
 * sequences, RFC 8878 4.1 and 4.2): the last byte's highest set bit marks
 * the start; reads take bits from high positions to low. Reading past the
 * beginning yields zeros and leaves `pos` negative (overflow).
 */
class BackwardBits {
  /** Bits left to read (negative after an overflow). */
  pos: number
  constructor(
    private readonly buf: Uint8Array,
    private readonly start: number,
    end: number
  ) {
    if (end <= start) corrupt()
    const last = buf[end - 1]
    if (last === 0) corrupt()
    this.pos = (end - start - 1) * 8 + (31 - Math.clz32(last))
  }
  /** Bits [p, p + n) of the stream (n <= 24), zeros below 0. */
  private bitsAt(p: number, n: number): number {
    if (p < 0) {
      if (p + n <= 0) return 0
      return this.bitsAt(0, p + n) << -p
    }
    const byte = this.start + (p >>> 3)
    const b = this.buf
    const w = b[byte] | (b[byte + 1] << 8) | (b[byte + 2] << 16) | (b[byte + 3] << 24)
    return (w >>> (p & 7)) & ((1 << n) - 1)
  }
  peek(n: number): number {
    return n === 0 ? 0 : this.bitsAt(this.pos - n, n)
  }
  read(n: number): number {
    if (n === 0) return 0
    if (n > 24) {
      const high = this.read(n - 16)
      return high * 65536 + this.read(16)
    }
    this.pos -= n
    return this.bitsAt(this.pos, n)
  }
}

// ---------------------------------------------------------------------------
// FSE (RFC 8878 4.1)

interface FseTable {
  readonly accuracyLog: number
  readonly symbol: Uint8Array
  readonly nbBits: Uint8Array
  readonly baseline: Uint16Array
}

const highBit = (x: number): number => 31 - Math.clz32(x)

/** Builds a decoding table from normalized counts (-1 = "less than 1"). */
const buildFseTable = (counts: ArrayLike<number>, symbols: number, accuracyLog: number): FseTable => {
  const size = 1 << accuracyLog
  const symbol = new Uint8Array(size)
  const nbBits = new Uint8Array(size)
  const baseline = new Uint16Array(size)
  const next = new Uint32Array(symbols)
  let high = size - 1
  for (let s = 0; s < symbols; s++) {
    if (counts[s] === -1) {
      if (high < 0) corrupt()
      symbol[high--] = s
      next[s] = 1
    } else {
      next[s] = counts[s]
    }
  }
  const step = (size >>> 1) + (size >>> 3) + 3
  const mask = size - 1
  let position = 0
  for (let s = 0; s < symbols; s++) {
    for (let i = 0; i < counts[s]; i++) {
      symbol[position] = s
      do position = (position + step) & mask
      while (position > high)
    }
  }
  if (position !== 0) corrupt()
  for (let u = 0; u < size; u++) {
    const x = next[symbol[u]]++
    const bits = accuracyLog - highBit(x)
    nbBits[u] = bits
    baseline[u] = (x << bits) - size
  }
  return { accuracyLog, symbol, nbBits, baseline }
}

/** Reads an FSE table description at `start` (RFC 8878 4.1.1); returns the table and its length in bytes. */
const readFseTable = (
  buf: Uint8Array,
  start: number,
  end: number,
  maxSymbol: number,
  maxAccuracyLog: number
): { readonly table: FseTable; readonly length: number } => {
  const bits = new ForwardBits(buf, start, end)
  const accuracyLog = bits.read(4) + 5
  if (accuracyLog > maxAccuracyLog) corrupt()
  const counts = new Int32Array(maxSymbol + 1)
  let remaining = (1 << accuracyLog) + 1
  let threshold = 1 << accuracyLog
  let width = accuracyLog + 1
  let s = 0
  while (remaining > 1) {
    if (s > maxSymbol) corrupt()
    const max = 2 * threshold - 1 - remaining
    const v = bits.peek(width)
    let value: number
    if ((v & (threshold - 1)) < max) {
      value = v & (threshold - 1)
      bits.skip(width - 1)
    } else {
      value = v & (2 * threshold - 1)
      if (value >= threshold) value -= max
      bits.skip(width)
    }
    const count = value - 1
    remaining -= count < 0 ? -count : count
    counts[s++] = count
    if (count === 0) {
      for (;;) {
        const repeat = bits.read(2)
        s += repeat
        if (repeat !== 3) break
      }
    }
    while (remaining < threshold) {
      width--
      threshold >>>= 1
    }
  }
  if (remaining !== 1 || s > maxSymbol + 1) corrupt()
  return { table: buildFseTable(counts, maxSymbol + 1, accuracyLog), length: bits.bytes() }
}

const rleFseTable = (symbol: number): FseTable => ({
  accuracyLog: 0,
  symbol: Uint8Array.of(symbol),
  nbBits: new Uint8Array(1),
  baseline: new Uint16Array(1)
})

// ---------------------------------------------------------------------------
// Huffman literals (RFC 8878 4.2)

interface HuffmanTable {
  readonly maxBits: number
  readonly symbol: Uint8Array
  readonly nbBits: Uint8Array
}

/** Reads a Huffman tree description at `start`; returns the table and the description's length. */
const readHuffmanTable = (buf: Uint8Array, start: number, end: number): { readonly table: HuffmanTable; readonly length: number } => {
  if (start >= end) corrupt()
  const header = buf[start]
  const weights = new Uint8Array(256)
  let count = 0
  let length: number
  if (header >= 128) {
    count = header - 127
    length = 1 + Math.ceil(count / 2)
    if (start + length > end) corrupt()
    for (let i = 0; i < count; i++) {
      const byte = buf[start + 1 + (i >>> 1)]
      weights[i] = i % 2 === 0 ? byte >>> 4 : byte & 15
    }
  } else {
    length = 1 + header
    if (header === 0 || start + length > end) corrupt()
    const { table, length: descriptionLength } = readFseTable(buf, start + 1, start + length, 255, 6)
    const bits = new BackwardBits(buf, start + 1 + descriptionLength, start + length)
    const log = table.accuracyLog
    let s1 = bits.read(log)
    let s2 = bits.read(log)
    const next = (state: number): number => table.baseline[state] + bits.read(table.nbBits[state])
    const push = (weight: number): void => {
      if (count >= 255) corrupt()
      weights[count++] = weight
    }
    // Two interleaved states; the stream ends when an update reads past its start.
    for (;;) {
      push(table.symbol[s1])
      s1 = next(s1)
      if (bits.pos < 0) {
        push(table.symbol[s2])
        break
      }
      push(table.symbol[s2])
      s2 = next(s2)
      if (bits.pos < 0) {
        push(table.symbol[s1])
        break
      }
    }
  }
  // The last symbol's weight is implied: it completes the sum to a power of two.
  let sum = 0
  for (let i = 0; i < count; i++) {
    if (weights[i] > 11) corrupt()
    if (weights[i] > 0) sum += 1 << (weights[i] - 1)
  }
  if (sum === 0 || count > 255) corrupt()
  const maxBits = highBit(sum) + 1
  if (maxBits > 11) corrupt()
  const left = (1 << maxBits) - sum
  if ((left & (left - 1)) !== 0) corrupt()
  weights[count++] = highBit(left) + 1
  const size = 1 << maxBits
  const symbol = new Uint8Array(size)
  const nbBits = new Uint8Array(size)
  // Codes in order of weight, then symbol: each symbol of weight w takes 2^(w-1) entries.
  let position = 0
  for (let w = 1; w <= maxBits; w++) {
    const span = 1 << (w - 1)
    for (let s = 0; s < count; s++) {
      if (weights[s] !== w) continue
      symbol.fill(s, position, position + span)
      nbBits.fill(maxBits + 1 - w, position, position + span)
      position += span
    }
  }
  if (position !== size) corrupt()
  return { table: { maxBits, symbol, nbBits }, length }
}

/** Decodes one Huffman stream into `out[from, to)`; the stream must be consumed exactly. */
const decodeHuffmanStream = (table: HuffmanTable, buf: Uint8Array, start: number, end: number, out: Uint8Array, from: number, to: number): void => {
  const bits = new BackwardBits(buf, start, end)
  const { maxBits, symbol, nbBits } = table
  for (let i = from; i < to; i++) {
    const entry = bits.peek(maxBits)
    out[i] = symbol[entry]
    bits.pos -= nbBits[entry]
  }
  if (bits.pos !== 0) corrupt()
}

// ---------------------------------------------------------------------------
// Sequences (RFC 8878 3.1.1.3.2)

const LL_BASE = [
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096,
  8192, 16384, 32768, 65536
]
const LL_BITS = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
const ML_BASE = [
  3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 37,
  39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027, 2051, 4099, 8195, 16387, 32771, 65539
]
const ML_BITS = [
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7,
  8, 9, 10, 11, 12, 13, 14, 15, 16
]

/** Predefined distributions (RFC 8878 3.1.1.3.2.2). */
const LL_DEFAULT = buildFseTable(
  [4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1],
  36,
  6
)
const ML_DEFAULT = buildFseTable(
  [
    1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, -1, -1, -1, -1, -1, -1, -1
  ],
  53,
  6
)
const OF_DEFAULT = buildFseTable(
  [1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1],
  29,
  5
)

/** Decoder state that lives across the blocks of one frame. */
interface FrameState {
  huffman: HuffmanTable | undefined
  ll: FseTable | undefined
  of: FseTable | undefined
  ml: FseTable | undefined
  rep1: number
  rep2: number
  rep3: number
}

/** Reads one sequence table (mode 0..3) at `p`; returns the table and the new position. */
const sequenceTable = (
  mode: number,
  previous: FseTable | undefined,
  predefined: FseTable,
  buf: Uint8Array,
  p: number,
  end: number,
  maxSymbol: number,
  maxAccuracyLog: number
): [FseTable, number] => {
  switch (mode) {
    case 0:
      return [predefined, p]
    case 1:
      if (p >= end || buf[p] > maxSymbol) corrupt()
      return [rleFseTable(buf[p]), p + 1]
    case 2: {
      const { table, length } = readFseTable(buf, p, end, maxSymbol, maxAccuracyLog)
      return [table, p + length]
    }
    default:
      if (previous === undefined) corrupt()
      return [previous!, p]
  }
}

// ---------------------------------------------------------------------------
// Blocks and frames

/** Decodes a compressed block `buf[start, end)` into `out` at `op`; returns the new output position. */
const decodeCompressedBlock = (state: FrameState, buf: Uint8Array, start: number, end: number, out: Uint8Array, op: number, frameStart: number): number => {
  // Literals section (RFC 8878 3.1.1.3.1).
  let p = start
  if (p >= end) corrupt()
  const b0 = buf[p]
  const literalsType = b0 & 3
  const sizeFormat = (b0 >>> 2) & 3
  let literals: Uint8Array
  let literalsStart = 0
  if (literalsType < 2) {
    let size: number
    if ((sizeFormat & 1) === 0) {
      size = b0 >>> 3
      p += 1
    } else if (sizeFormat === 1) {
      if (p + 2 > end) corrupt()
      size = (b0 >>> 4) + (buf[p + 1] << 4)
      p += 2
    } else {
      if (p + 3 > end) corrupt()
      size = (b0 >>> 4) + (buf[p + 1] << 4) + (buf[p + 2] << 12)
      p += 3
    }
    if (size > BLOCK_SIZE_MAX) corrupt()
    if (literalsType === 0) {
      if (p + size > end) corrupt()
      literals = buf
      literalsStart = p
      p += size
    } else {
      if (p >= end) corrupt()
      literals = new Uint8Array(size).fill(buf[p])
      p += 1
    }
  } else {
    let regenerated: number
    let compressed: number
    let streams = 4
    if (sizeFormat < 2) {
      if (p + 3 > end) corrupt()
      regenerated = (b0 >>> 4) | ((buf[p + 1] & 0x3f) << 4)
      compressed = (buf[p + 1] >>> 6) | (buf[p + 2] << 2)
      if (sizeFormat === 0) streams = 1
      p += 3
    } else if (sizeFormat === 2) {
      if (p + 4 > end) corrupt()
      regenerated = (b0 >>> 4) | (buf[p + 1] << 4) | ((buf[p + 2] & 3) << 12)
      compressed = (buf[p + 2] >>> 2) | (buf[p + 3] << 6)
      p += 4
    } else {
      if (p + 5 > end) corrupt()
      regenerated = (b0 >>> 4) | (buf[p + 1] << 4) | ((buf[p + 2] & 0x3f) << 12)
      compressed = (buf[p + 2] >>> 6) | (buf[p + 3] << 2) | (buf[p + 4] << 10)
      p += 5
    }
    if (regenerated > BLOCK_SIZE_MAX || p + compressed > end) corrupt()
    const literalsEnd = p + compressed
    if (literalsType === 2) {
      const { table, length } = readHuffmanTable(buf, p, literalsEnd)
      state.huffman = table
      p += length
    } else if (state.huffman === undefined) {
      corrupt()
    }
    const table = state.huffman!
    literals = new Uint8Array(regenerated)
    if (streams === 1) {
      decodeHuffmanStream(table, buf, p, literalsEnd, literals, 0, regenerated)
    } else {
      if (p + 6 > literalsEnd) corrupt()
      const s1 = buf[p] | (buf[p + 1] << 8)
      const s2 = buf[p + 2] | (buf[p + 3] << 8)
      const s3 = buf[p + 4] | (buf[p + 5] << 8)
      const a = p + 6
      const b = a + s1
      const c = b + s2
      const d = c + s3
      if (d >= literalsEnd) corrupt()
      const segment = Math.ceil(regenerated / 4)
      if (3 * segment > regenerated) corrupt()
      decodeHuffmanStream(table, buf, a, b, literals, 0, segment)
      decodeHuffmanStream(table, buf, b, c, literals, segment, 2 * segment)
      decodeHuffmanStream(table, buf, c, d, literals, 2 * segment, 3 * segment)
      decodeHuffmanStream(table, buf, d, literalsEnd, literals, 3 * segment, regenerated)
    }
    p = literalsEnd
  }
  const literalsLength = literals === buf ? p - literalsStart : literals.length
  const literalsEnd = literalsStart + literalsLength

  // Sequences section (RFC 8878 3.1.1.3.2).
  if (p >= end) corrupt()
  let sequences = buf[p]
  if (sequences === 0) {
    p += 1
  } else if (sequences < 128) {
    p += 1
  } else if (sequences < 255) {
    if (p + 2 > end) corrupt()
    sequences = ((sequences - 128) << 8) + buf[p + 1]
    p += 2
  } else {
    if (p + 3 > end) corrupt()
    sequences = buf[p + 1] + (buf[p + 2] << 8) + 0x7f00
    p += 3
  }
  let lit = literalsStart
  const room = out.length
  if (sequences > 0) {
    if (p >= end) corrupt()
    const modes = buf[p++]
    if ((modes & 3) !== 0) corrupt()
    ;[state.ll, p] = sequenceTable(modes >>> 6, state.ll, LL_DEFAULT, buf, p, end, 35, 9)
    ;[state.of, p] = sequenceTable((modes >>> 4) & 3, state.of, OF_DEFAULT, buf, p, end, 31, 8)
    ;[state.ml, p] = sequenceTable((modes >>> 2) & 3, state.ml, ML_DEFAULT, buf, p, end, 52, 9)
    const ll = state.ll!
    const of = state.of!
    const ml = state.ml!
    const bits = new BackwardBits(buf, p, end)
    let llState = bits.read(ll.accuracyLog)
    let ofState = bits.read(of.accuracyLog)
    let mlState = bits.read(ml.accuracyLog)
    let { rep1, rep2, rep3 } = state
    for (let i = 0; i < sequences; i++) {
      const ofCode = of.symbol[ofState]
      const mlCode = ml.symbol[mlState]
      const llCode = ll.symbol[llState]
      if (ofCode > 31) corrupt()
      let offset = 2 ** ofCode + bits.read(ofCode)
      const matchLength = ML_BASE[mlCode] + bits.read(ML_BITS[mlCode])
      const literalLength = LL_BASE[llCode] + bits.read(LL_BITS[llCode])
      if (offset > 3) {
        offset -= 3
        rep3 = rep2
        rep2 = rep1
        rep1 = offset
      } else {
        const index = literalLength === 0 ? offset + 1 : offset
        if (index === 1) {
          offset = rep1
        } else if (index === 2) {
          offset = rep2
          rep2 = rep1
          rep1 = offset
        } else if (index === 3) {
          offset = rep3
          rep3 = rep2
          rep2 = rep1
          rep1 = offset
        } else {
          offset = rep1 - 1
          if (offset === 0) corrupt()
          rep3 = rep2
          rep2 = rep1
          rep1 = offset
        }
      }
      if (i + 1 < sequences) {
        llState = ll.baseline[llState] + bits.read(ll.nbBits[llState])
        mlState = ml.baseline[mlState] + bits.read(ml.nbBits[mlState])
        ofState = of.baseline[ofState] + bits.read(of.nbBits[ofState])
      }
      // Execute: literals, then the match (may overlap its own output).
      if (lit + literalLength > literalsEnd) corrupt()
      if (op + literalLength + matchLength > room) throw new ZstdFailure(DST_SIZE_TOO_SMALL)
      out.set(literals.subarray(lit, lit + literalLength), op)
      lit += literalLength
      op += literalLength
      if (offset > op - frameStart) corrupt()
      const from = op - offset
      if (offset >= matchLength) {
        out.copyWithin(op, from, from + matchLength)
      } else {
        for (let k = 0; k < matchLength; k++) out[op + k] = out[from + k]
      }
      op += matchLength
    }
    if (bits.pos !== 0) corrupt()
    state.rep1 = rep1
    state.rep2 = rep2
    state.rep3 = rep3
  } else if (p !== end) {
    corrupt()
  }
  const rest = literalsEnd - lit
  if (op + rest > room) throw new ZstdFailure(DST_SIZE_TOO_SMALL)
  out.set(literals.subarray(lit, literalsEnd), op)
  return op + rest
}

/** Decodes one zstd frame (its exact bytes) into `out`: bytes written, or a negated zstd error code. */
export const decodeZstdFrame = (frame: Uint8Array, out: Uint8Array): number => {
  const walked = walkZstdFrame(frame, 0)
  if (walked.kind !== "frame" || walked.length !== frame.length) return -CORRUPTION
  if (walked.dictionaryId !== 0) return -DICTIONARY_WRONG
  const state: FrameState = { huffman: undefined, ll: undefined, of: undefined, ml: undefined, rep1: 1, rep2: 4, rep3: 8 }
  let p = walked.headerLength
  let op = 0
  try {
    for (;;) {
      const header = frame[p] | (frame[p + 1] << 8) | (frame[p + 2] << 16)
      const last = (header & 1) !== 0
      const type = (header >>> 1) & 3
      const size = header >>> 3
      p += 3
      if (type === 0) {
        if (op + size > out.length) return -DST_SIZE_TOO_SMALL
        out.set(frame.subarray(p, p + size), op)
        op += size
        p += size
      } else if (type === 1) {
        if (op + size > out.length) return -DST_SIZE_TOO_SMALL
        out.fill(frame[p], op, op + size)
        op += size
        p += 1
      } else {
        const before = op
        op = decodeCompressedBlock(state, frame, p, p + size, out, op, 0)
        if (op - before > BLOCK_SIZE_MAX) return -CORRUPTION
        p += size
      }
      if (last) break
    }
  } catch (error) {
    if (error instanceof ZstdFailure) return -error.code
    throw error
  }
  if (walked.contentSize !== undefined && walked.contentSize !== op) return -CORRUPTION
  if (walked.hasChecksum) {
    const stored = (frame[p] | (frame[p + 1] << 8) | (frame[p + 2] << 16) | (frame[p + 3] << 24)) >>> 0
    if (Number(xxh64(out.subarray(0, op)) & 0xffffffffn) !== stored) return -CHECKSUM_WRONG
  }
  return op
}

// ---------------------------------------------------------------------------
// XXH64 (the frame checksum is its low 32 bits, RFC 8878 3.1.1), with BigInt:
// only run on this fallback path.

const M64 = 0xffffffffffffffffn
const P1 = 0x9e3779b185ebca87n
const P2 = 0xc2b2ae3d27d4eb4fn
const P3 = 0x165667b19e3779f9n
const P4 = 0x85ebca77c2b2ae63n
const P5 = 0x27d4eb2f165667c5n

const rotl = (x: bigint, r: bigint): bigint => ((x << r) | (x >> (64n - r))) & M64
const round = (acc: bigint, lane: bigint): bigint => (rotl((acc + lane * P2) & M64, 31n) * P1) & M64
const merge = (acc: bigint, v: bigint): bigint => (((acc ^ round(0n, v)) * P1 + P4) & M64)

/** XXH64 with seed 0. */
export const xxh64 = (data: Uint8Array): bigint => {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  const lane = (i: number): bigint => BigInt(view.getUint32(i, true)) | (BigInt(view.getUint32(i + 4, true)) << 32n)
  const n = data.length
  let i = 0
  let h: bigint
  if (n >= 32) {
    let v1 = (P1 + P2) & M64
    let v2 = P2
    let v3 = 0n
    let v4 = (M64 + 1n - P1) & M64
    for (; i + 32 <= n; i += 32) {
      v1 = round(v1, lane(i))
      v2 = round(v2, lane(i + 8))
      v3 = round(v3, lane(i + 16))
      v4 = round(v4, lane(i + 24))
    }
    h = (rotl(v1, 1n) + rotl(v2, 7n) + rotl(v3, 12n) + rotl(v4, 18n)) & M64
    h = merge(h, v1)
    h = merge(h, v2)
    h = merge(h, v3)
    h = merge(h, v4)
  } else {
    h = P5
  }
  h = (h + BigInt(n)) & M64
  for (; i + 8 <= n; i += 8) {
    h ^= round(0n, lane(i))
    h = (rotl(h, 27n) * P1 + P4) & M64
  }
  if (i + 4 <= n) {
    h ^= (BigInt(view.getUint32(i, true)) * P1) & M64
    h = (rotl(h, 23n) * P2 + P3) & M64
    i += 4
  }
  for (; i < n; i++) {
    h ^= (BigInt(data[i]) * P5) & M64
    h = (rotl(h, 11n) * P1) & M64
  }
  h ^= h >> 33n
  h = (h * P2) & M64
  h ^= h >> 29n
  h = (h * P3) & M64
  h ^= h >> 32n
  return h
}
