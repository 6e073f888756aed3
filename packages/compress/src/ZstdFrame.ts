/**
 * A small zstd frame walker (RFC 8878, section 3.1): finds where a frame ends
 * by reading its header and block headers, without decoding.
 *
 * QEMU stores a zstd cluster as one or more frames followed by padding (the
 * stored length is only known to the 512-byte sector), while one-shot
 * decoders want exactly the bytes of a frame. Walking the block headers gives
 * that length in O(blocks).
 *
 * Pure code, no dependencies.
 */

/** Little-endian magic of a zstd frame (RFC 8878 3.1.1). */
const ZSTD_MAGIC = 0xfd2fb528
/** Skippable frames use magics 0x184D2A50..0x184D2A5F (RFC 8878 3.1.2). */
const ZSTD_SKIPPABLE_MAGIC_MIN = 0x184d2a50
const ZSTD_SKIPPABLE_MAGIC_MAX = 0x184d2a5f
/** Largest block size a frame may use (RFC 8878 3.1.1.2: Block_Maximum_Size <= 128 KiB). */
const ZSTD_BLOCK_SIZE_MAX = 128 * 1024

/** Block types (RFC 8878 3.1.1.2.2). */
export const ZstdBlockType = { Raw: 0, Rle: 1, Compressed: 2, Reserved: 3 } as const

/** A zstd frame found at `offset`. */
export interface ZstdFrame {
  readonly kind: "frame"
  readonly offset: number
  /** Bytes from `offset` through the last block and the optional checksum. */
  readonly length: number
  readonly headerLength: number
  /** Frame_Content_Size when the header carries it (may exceed 2^53 in hostile input: then it is approximate). */
  readonly contentSize: number | undefined
  /** Window size from the Window_Descriptor; undefined for single-segment frames (window = content size). */
  readonly windowSize: number | undefined
  /** 0 when the frame uses no dictionary. */
  readonly dictionaryId: number
  readonly hasChecksum: boolean
  readonly blockCount: number
  /** Blocks of each type (RFC 8878 3.1.1.2.2). */
  readonly rawBlocks: number
  readonly rleBlocks: number
  readonly compressedBlocks: number
  /** Sum of Raw and RLE block sizes (their regenerated size is known without decoding). */
  readonly rawAndRleBytes: number
}

/** A skippable frame (user data that decoders skip). */
export interface ZstdSkippableFrame {
  readonly kind: "skippable"
  readonly offset: number
  readonly length: number
  /** Low 4 bits of the magic (0..15). */
  readonly variant: number
}

/** The bytes at `offset` are not a complete frame. */
export interface ZstdFrameProblem {
  readonly kind: "truncated" | "invalid"
  readonly offset: number
  readonly message: string
}

/** What `walkZstdFrame` finds at an offset: a frame (with its exact length), a skippable frame, or why neither is there. */
export type ZstdWalkResult = ZstdFrame | ZstdSkippableFrame | ZstdFrameProblem

const u32le = (b: Uint8Array, i: number): number => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0

const truncated = (offset: number, what: string): ZstdFrameProblem => ({
  kind: "truncated",
  offset,
  message: `zstd frame at ${offset} is truncated (${what})`
})

const invalid = (offset: number, what: string): ZstdFrameProblem => ({
  kind: "invalid",
  offset,
  message: `zstd frame at ${offset} is invalid: ${what}`
})

/** True when `input` has a frame or skippable-frame magic at `offset`. */
export const hasZstdMagic = (input: Uint8Array, offset = 0): boolean => {
  if (offset + 4 > input.length) return false
  const magic = u32le(input, offset)
  return magic === ZSTD_MAGIC || (magic >= ZSTD_SKIPPABLE_MAGIC_MIN && magic <= ZSTD_SKIPPABLE_MAGIC_MAX)
}

/**
 * Reads the frame (or skippable frame) starting at `offset` and returns its
 * exact length and header fields. Never reads past `input.length` and never
 * allocates; runs in time linear in the number of blocks.
 */
export const walkZstdFrame = (input: Uint8Array, offset = 0): ZstdWalkResult => {
  const end = input.length
  if (!Number.isInteger(offset) || offset < 0 || offset > end) return invalid(offset, "offset outside the input")
  if (offset + 4 > end) return truncated(offset, "magic number")
  const magic = u32le(input, offset)

  if (magic >= ZSTD_SKIPPABLE_MAGIC_MIN && magic <= ZSTD_SKIPPABLE_MAGIC_MAX) {
    if (offset + 8 > end) return truncated(offset, "skippable frame size")
    const length = 8 + u32le(input, offset + 4)
    if (offset + length > end) return truncated(offset, "skippable frame data")
    return { kind: "skippable", offset, length, variant: magic & 0xf }
  }
  if (magic !== ZSTD_MAGIC) {
    return invalid(offset, `bad magic 0x${magic.toString(16).padStart(8, "0")}`)
  }

  // Frame_Header_Descriptor (RFC 8878 3.1.1.1.1)
  let p = offset + 4
  if (p >= end) return truncated(offset, "frame header descriptor")
  const descriptor = input[p++]
  const fcsFlag = descriptor >>> 6
  const singleSegment = (descriptor & 0x20) !== 0
  const reservedBit = (descriptor & 0x08) !== 0
  const hasChecksum = (descriptor & 0x04) !== 0
  const dictIdFlag = descriptor & 0x03
  if (reservedBit) return invalid(offset, "reserved bit set in the frame header descriptor")

  const dictIdSize = dictIdFlag === 3 ? 4 : dictIdFlag
  const fcsSize = fcsFlag === 0 ? (singleSegment ? 1 : 0) : 1 << fcsFlag
  const headerLength = 4 + 1 + (singleSegment ? 0 : 1) + dictIdSize + fcsSize
  if (offset + headerLength > end) return truncated(offset, "frame header")

  let windowSize: number | undefined
  if (!singleSegment) {
    // Window_Descriptor (RFC 8878 3.1.1.1.2)
    const wd = input[p++]
    const exponent = wd >>> 3
    const mantissa = wd & 7
    const base = 2 ** (10 + exponent)
    windowSize = base + (base / 8) * mantissa
  }

  let dictionaryId = 0
  if (dictIdSize === 1) dictionaryId = input[p]
  else if (dictIdSize === 2) dictionaryId = input[p] | (input[p + 1] << 8)
  else if (dictIdSize === 4) dictionaryId = u32le(input, p)
  p += dictIdSize

  let contentSize: number | undefined
  if (fcsSize === 1) contentSize = input[p]
  else if (fcsSize === 2) contentSize = (input[p] | (input[p + 1] << 8)) + 256
  else if (fcsSize === 4) contentSize = u32le(input, p)
  else if (fcsSize === 8) contentSize = u32le(input, p + 4) * 4294967296 + u32le(input, p)
  p += fcsSize

  // Blocks (RFC 8878 3.1.1.2): 3-byte little-endian header, then content.
  let blockCount = 0
  let rawBlocks = 0
  let rleBlocks = 0
  let rawAndRleBytes = 0
  for (;;) {
    if (p + 3 > end) return truncated(offset, `header of block ${blockCount}`)
    const header = input[p] | (input[p + 1] << 8) | (input[p + 2] << 16)
    p += 3
    const last = (header & 1) !== 0
    const type = (header >>> 1) & 3
    const size = header >>> 3
    if (type === ZstdBlockType.Reserved) return invalid(offset, `block ${blockCount} has the reserved block type`)
    if (size > ZSTD_BLOCK_SIZE_MAX) return invalid(offset, `block ${blockCount} is larger than 128 KiB (${size})`)
    const contentLength = type === ZstdBlockType.Rle ? 1 : size
    if (p + contentLength > end) return truncated(offset, `content of block ${blockCount}`)
    p += contentLength
    if (type === ZstdBlockType.Raw) rawBlocks++
    else if (type === ZstdBlockType.Rle) rleBlocks++
    if (type !== ZstdBlockType.Compressed) rawAndRleBytes += size
    blockCount++
    if (last) break
  }
  if (hasChecksum) {
    if (p + 4 > end) return truncated(offset, "content checksum")
    p += 4
  }
  return {
    kind: "frame",
    offset,
    length: p - offset,
    headerLength,
    contentSize,
    windowSize,
    dictionaryId,
    hasChecksum,
    blockCount,
    rawBlocks,
    rleBlocks,
    compressedBlocks: blockCount - rawBlocks - rleBlocks,
    rawAndRleBytes
  }
}
