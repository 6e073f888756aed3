/** Builds zstd frames by hand (RFC 8878 3.1.1) with Raw and RLE blocks, for walker and decoder tests. */
export type Block =
  | { readonly type: "raw"; readonly data: Uint8Array }
  | { readonly type: "rle"; readonly byte: number; readonly size: number }
  | { readonly type: "reserved"; readonly size: number }

export interface FrameSpec {
  readonly blocks: ReadonlyArray<Block>
  /** Frame_Content_Size to write (omitted when undefined). */
  readonly contentSize?: number
  /** FCS field width in bytes: 1 (needs singleSegment), 2, 4 or 8. Default: smallest that fits. */
  readonly fcsBytes?: 1 | 2 | 4 | 8
  readonly singleSegment?: boolean
  /** Window_Descriptor byte (exponent << 3 | mantissa); default 0x58 (8 MiB... exponent 11 => 2^21). */
  readonly windowDescriptor?: number
  readonly dictionaryId?: number
  readonly dictionaryIdBytes?: 1 | 2 | 4
  /** Sets the checksum flag and appends these 4 bytes (not a real XXH64 unless the caller computed it). */
  readonly checksum?: Uint8Array
  readonly reservedBit?: boolean
}

const le = (value: number, bytes: number): Array<number> => {
  const out: Array<number> = []
  let v = value
  for (let i = 0; i < bytes; i++) {
    out.push(v % 256)
    v = Math.floor(v / 256)
  }
  return out
}

export const buildFrame = (spec: FrameSpec): Uint8Array => {
  const singleSegment = spec.singleSegment ?? false
  let fcsBytes = 0
  let fcsValue = 0
  if (spec.contentSize !== undefined) {
    const size = spec.contentSize
    fcsBytes =
      spec.fcsBytes ?? (singleSegment && size < 256 ? 1 : size >= 256 && size < 65536 + 256 ? 2 : size < 2 ** 32 ? 4 : 8)
    fcsValue = fcsBytes === 2 ? size - 256 : size
  } else if (singleSegment) {
    throw new Error("single-segment frames carry a content size")
  }
  const fcsFlag = fcsBytes === 0 || fcsBytes === 1 ? 0 : fcsBytes === 2 ? 1 : fcsBytes === 4 ? 2 : 3
  if (fcsBytes === 1 && !singleSegment) throw new Error("a 1-byte FCS needs single segment")
  const dictBytes = spec.dictionaryId === undefined ? 0 : (spec.dictionaryIdBytes ?? 4)
  const dictFlag = dictBytes === 0 ? 0 : dictBytes === 1 ? 1 : dictBytes === 2 ? 2 : 3
  const descriptor =
    (fcsFlag << 6) |
    (singleSegment ? 0x20 : 0) |
    (spec.reservedBit ? 0x08 : 0) |
    (spec.checksum ? 0x04 : 0) |
    dictFlag
  const bytes: Array<number> = [0x28, 0xb5, 0x2f, 0xfd, descriptor]
  if (!singleSegment) bytes.push(spec.windowDescriptor ?? 0x58)
  if (dictBytes > 0) bytes.push(...le(spec.dictionaryId ?? 0, dictBytes))
  if (fcsBytes > 0) bytes.push(...le(fcsValue, fcsBytes))
  spec.blocks.forEach((block, i) => {
    const last = i === spec.blocks.length - 1 ? 1 : 0
    if (block.type === "raw") {
      bytes.push(...le(last | (0 << 1) | (block.data.length << 3), 3))
      for (const b of block.data) bytes.push(b)
    } else if (block.type === "rle") {
      bytes.push(...le(last | (1 << 1) | (block.size << 3), 3))
      bytes.push(block.byte)
    } else {
      bytes.push(...le(last | (3 << 1) | (block.size << 3), 3))
      for (let k = 0; k < block.size; k++) bytes.push(0)
    }
  })
  if (spec.checksum) bytes.push(...spec.checksum)
  return Uint8Array.from(bytes)
}

/** A skippable frame (RFC 8878 3.1.2) with magic 0x184D2A5 + variant. */
export const buildSkippable = (payload: Uint8Array, variant = 0): Uint8Array =>
  Uint8Array.from([0x50 | variant, 0x2a, 0x4d, 0x18, ...le(payload.length, 4), ...payload])
