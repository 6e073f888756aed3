import { HeaderExtensionType, Limits } from "./constants.js"
import { FormatError } from "./errors.js"
import { align8, fromUtf8, need, putU32, putU64, u32, u64, utf8 } from "./bytes.js"

/** One entry of the feature name table (qcow2.txt "Feature name table"). */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  readonly type: 0 | 1 | 2
  /** Bit number 0..63 within the selected feature bitmap. */
  readonly bit: number
  /** At most 46 bytes of UTF-8. */
  readonly name: string
}

/** The bitmaps extension (qcow2.txt "Bitmaps extension"). */
export interface BitmapsExtension {
  readonly nbBitmaps: number
  readonly directorySize: number
  readonly directoryOffset: number
}

/** The full disk encryption header pointer (qcow2.txt "Full disk encryption header pointer"). */
export interface FullDiskEncryptionExtension {
  readonly offset: number
  readonly length: number
}

/** Decoded header extensions (qcow2.txt "Header extensions"). Unknown types are kept verbatim. */
export interface HeaderExtensions {
  readonly backingFormat?: string
  readonly featureNames: ReadonlyArray<FeatureName>
  readonly bitmaps?: BitmapsExtension
  readonly fullDiskEncryption?: FullDiskEncryptionExtension
  readonly externalDataFile?: string
  readonly unknown: ReadonlyArray<{ readonly type: number; readonly data: Uint8Array }>
}

/** Bytes per feature name table entry. */
export const FEATURE_NAME_ENTRY_SIZE = 48
const FEATURE_NAME_MAX = 46

/**
 * The feature name table QEMU 7.2 writes (checked with qemu-img create +
 * hexdump). QEMU writes it only for v3 images with clusters larger than
 * 4 KiB: see featureNamesFor.
 */
export const defaultFeatureNames: ReadonlyArray<FeatureName> = [
  { type: 0, bit: 0, name: "dirty bit" },
  { type: 0, bit: 1, name: "corrupt bit" },
  { type: 0, bit: 2, name: "external data file" },
  { type: 0, bit: 3, name: "compression type" },
  { type: 0, bit: 4, name: "extended L2 entries" },
  { type: 1, bit: 0, name: "lazy refcounts" },
  { type: 2, bit: 0, name: "bitmaps" },
  { type: 2, bit: 1, name: "raw external data" }
]

/** The feature name table QEMU 7.2 would write for an image of this version and cluster size. */
export function featureNamesFor(version: 2 | 3, clusterBits: number): ReadonlyArray<FeatureName> {
  return version === 3 && clusterBits > 12 ? defaultFeatureNames : []
}

const knownTypes = new Set<number>(Object.values(HeaderExtensionType))

const typeName = (type: number): string => "0x" + type.toString(16).padStart(8, "0")

/**
 * Parses the header extension area `[start, end)` of `bytes` (qcow2.txt
 * "Header extensions"). Every extension must lie inside `end` (InvalidField);
 * bytes missing from `bytes` give Truncated. Known extensions may appear once.
 * Returns the extensions and the offset just after the end marker (or `end`).
 */
export function decodeHeaderExtensions(
  bytes: Uint8Array,
  start: number,
  end: number
): { readonly extensions: HeaderExtensions; readonly endOffset: number } {
  let backingFormat: string | undefined
  let featureNames: FeatureName[] | undefined
  let bitmaps: BitmapsExtension | undefined
  let fullDiskEncryption: FullDiskEncryptionExtension | undefined
  let externalDataFile: string | undefined
  const unknown: Array<{ type: number; data: Uint8Array }> = []
  let off = start
  while (off < end) {
    if (end - off < 8) {
      throw new FormatError("InvalidField", `header extension at ${off} crosses the end of the extension area (${end})`, "header_extension", off)
    }
    need(bytes, off, 8, "header_extension")
    const type = u32(bytes, off)
    const len = u32(bytes, off + 4)
    const dataOffset = off + 8
    // QEMU (qcow2_read_extensions) checks the length before looking at the type:
    // an end marker whose length runs past the area is "Header extension too large" too.
    if (len > end - dataOffset) {
      throw new FormatError(
        "InvalidField",
        `header extension ${typeName(type)} at ${off} has length ${len}, past the end of the extension area (${end})`,
        "header_extension",
        off
      )
    }
    if (type === HeaderExtensionType.End) {
      off = dataOffset
      break
    }
    need(bytes, dataOffset, len, "header_extension")
    const data = bytes.subarray(dataOffset, dataOffset + len)
    // A known extension given twice: the later one counts, as in QEMU's qcow2_read_extensions.
    switch (type) {
      // Both names are C strings in QEMU: they end at the first NUL byte.
      case HeaderExtensionType.BackingFormat:
        backingFormat = cString(data)
        break
      case HeaderExtensionType.ExternalDataFile:
        externalDataFile = cString(data)
        break
      case HeaderExtensionType.FeatureNameTable:
        featureNames = decodeFeatureNames(data)
        break
      case HeaderExtensionType.Bitmaps:
        bitmaps = decodeBitmapsExtension(data, off)
        break
      case HeaderExtensionType.FullDiskEncryption:
        if (len !== 16) {
          throw new FormatError("InvalidField", `CRYPTO header extension size ${len}, but expected size 16`, "header_extension", off)
        }
        fullDiskEncryption = { offset: u64(data, 0, "fde.offset"), length: u64(data, 8, "fde.length") }
        break
      default:
        unknown.push({ type, data: data.slice() })
    }
    off = dataOffset + align8(len)
  }
  const extensions: HeaderExtensions = {
    featureNames: featureNames ?? [],
    unknown,
    ...(backingFormat !== undefined ? { backingFormat } : {}),
    ...(bitmaps !== undefined ? { bitmaps } : {}),
    ...(fullDiskEncryption !== undefined ? { fullDiskEncryption } : {}),
    ...(externalDataFile !== undefined ? { externalDataFile } : {})
  }
  return { extensions, endOffset: Math.min(off, end) }
}

const cString = (b: Uint8Array): string => {
  const nul = b.indexOf(0)
  return fromUtf8(nul < 0 ? b : b.subarray(0, nul))
}

/**
 * Entries with an unknown feature type (> 2) are skipped; a trailing
 * partial entry counts, zero-padded (QEMU reads the table into a zeroed
 * buffer).
 */
function decodeFeatureNames(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = []
  const n = Math.ceil(data.length / FEATURE_NAME_ENTRY_SIZE)
  const padded = new Uint8Array(n * FEATURE_NAME_ENTRY_SIZE)
  padded.set(data)
  for (let i = 0; i < n; i++) {
    const o = i * FEATURE_NAME_ENTRY_SIZE
    const type = padded[o]!
    if (type > 2) continue
    const nameBytes = padded.subarray(o + 2, o + FEATURE_NAME_ENTRY_SIZE)
    const nul = nameBytes.indexOf(0)
    out.push({ type: type as 0 | 1 | 2, bit: padded[o + 1]!, name: fromUtf8(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)) })
  }
  return out
}

function decodeBitmapsExtension(data: Uint8Array, off: number): BitmapsExtension {
  if (data.length !== 24) {
    throw new FormatError("InvalidField", `bitmaps extension must be 24 bytes, got ${data.length}`, "bitmaps_extension", off)
  }
  const nbBitmaps = u32(data, 0)
  if (nbBitmaps < 1 || nbBitmaps > Limits.maxBitmaps) {
    throw new FormatError("InvalidField", `bitmaps extension: nb_bitmaps must be 1..${Limits.maxBitmaps}, got ${nbBitmaps}`, "nb_bitmaps", off)
  }
  if (u32(data, 4) !== 0) {
    throw new FormatError("InvalidField", "bitmaps extension: reserved field is not zero", "bitmaps_extension", off)
  }
  return {
    nbBitmaps,
    directorySize: u64(data, 8, "bitmap_directory_size"),
    directoryOffset: u64(data, 16, "bitmap_directory_offset")
  }
}

/** Serialised size of the extension area including the end marker. */
export function headerExtensionsSize(ext: HeaderExtensions): number {
  return encodeHeaderExtensions(ext).length
}

/**
 * Serialises the extensions followed by the end marker, in the order QEMU
 * 7.2 writes them (qcow2_update_header): backing format, external data file,
 * full disk encryption, feature names (only if non-empty), bitmaps, then
 * unknown ones in their original order.
 */
export function encodeHeaderExtensions(ext: HeaderExtensions): Uint8Array {
  const parts: Array<{ type: number; data: Uint8Array }> = []
  if (ext.backingFormat !== undefined) parts.push({ type: HeaderExtensionType.BackingFormat, data: utf8(ext.backingFormat) })
  if (ext.externalDataFile !== undefined) parts.push({ type: HeaderExtensionType.ExternalDataFile, data: utf8(ext.externalDataFile) })
  if (ext.fullDiskEncryption !== undefined) {
    const d = new Uint8Array(16)
    putU64(d, 0, ext.fullDiskEncryption.offset, "fde.offset")
    putU64(d, 8, ext.fullDiskEncryption.length, "fde.length")
    parts.push({ type: HeaderExtensionType.FullDiskEncryption, data: d })
  }
  if (ext.featureNames.length > 0) parts.push({ type: HeaderExtensionType.FeatureNameTable, data: encodeFeatureNames(ext.featureNames) })
  if (ext.bitmaps !== undefined) {
    const { nbBitmaps } = ext.bitmaps
    if (!Number.isInteger(nbBitmaps) || nbBitmaps < 1 || nbBitmaps > Limits.maxBitmaps) {
      throw new FormatError("InvalidField", `nb_bitmaps must be 1..${Limits.maxBitmaps}, got ${nbBitmaps}`, "nb_bitmaps")
    }
    const d = new Uint8Array(24)
    putU32(d, 0, nbBitmaps)
    putU64(d, 8, ext.bitmaps.directorySize, "bitmap_directory_size")
    putU64(d, 16, ext.bitmaps.directoryOffset, "bitmap_directory_offset")
    parts.push({ type: HeaderExtensionType.Bitmaps, data: d })
  }
  for (const u of ext.unknown) {
    if (!Number.isInteger(u.type) || u.type < 0 || u.type > 0xffffffff || knownTypes.has(u.type)) {
      throw new FormatError("InvalidField", `unknown header extension has a reserved or invalid type ${u.type}`, "header_extension")
    }
    parts.push(u)
  }
  let size = 8
  for (const p of parts) size += 8 + align8(p.data.length)
  const out = new Uint8Array(size)
  let off = 0
  for (const p of parts) {
    putU32(out, off, p.type)
    putU32(out, off + 4, p.data.length)
    out.set(p.data, off + 8)
    off += 8 + align8(p.data.length)
  }
  return out
}

function encodeFeatureNames(names: ReadonlyArray<FeatureName>): Uint8Array {
  const out = new Uint8Array(names.length * FEATURE_NAME_ENTRY_SIZE)
  names.forEach((f, i) => {
    const o = i * FEATURE_NAME_ENTRY_SIZE
    if (f.type !== 0 && f.type !== 1 && f.type !== 2) {
      throw new FormatError("InvalidField", `feature type must be 0, 1 or 2, got ${String(f.type)}`, "feature_name")
    }
    if (!Number.isInteger(f.bit) || f.bit < 0 || f.bit > 63) {
      throw new FormatError("InvalidField", `feature bit must be 0..63, got ${f.bit}`, "feature_name")
    }
    const name = utf8(f.name)
    if (name.length > FEATURE_NAME_MAX) {
      throw new FormatError("InvalidField", `feature name longer than ${FEATURE_NAME_MAX} bytes: ${f.name}`, "feature_name")
    }
    out[o] = f.type
    out[o + 1] = f.bit
    out.set(name, o + 2)
  })
  return out
}
