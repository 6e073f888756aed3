import {
  AutoclearFeature,
  CryptMethod,
  IncompatibleFeature,
  Limits,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH
} from "./constants.js"
import { FormatError } from "./errors.js"
import { checkU32, fromUtf8, need, putU32, putU64, putU64big, u32, u64, u64big, utf8 } from "./bytes.js"
import { decodeHeaderExtensions, encodeHeaderExtensions, type HeaderExtensions } from "./extensions.js"

/**
 * The fixed image header (qcow2.txt "Header"). For version 2 the v3-only
 * fields take their implied values: features 0, refcount_order 4,
 * header_length 72, compression_type 0.
 */
export interface Header {
  readonly version: 2 | 3
  readonly backingFileOffset: number
  readonly backingFileSize: number
  readonly clusterBits: number
  /** Virtual size in bytes. */
  readonly size: number
  readonly cryptMethod: number
  /** Entries in the active L1 table. */
  readonly l1Size: number
  readonly l1TableOffset: number
  readonly refcountTableOffset: number
  readonly refcountTableClusters: number
  readonly nbSnapshots: number
  readonly snapshotsOffset: number
  readonly incompatibleFeatures: bigint
  readonly compatibleFeatures: bigint
  readonly autoclearFeatures: bigint
  readonly refcountOrder: number
  readonly headerLength: number
  readonly compressionType: number
  /** Bytes [112, headerLength) kept verbatim (unknown additional fields); empty if none. */
  readonly unknownHeaderFields: Uint8Array
}

/** Header, extensions and backing file name: everything cluster 0 holds. */
export interface ImageHeader {
  readonly header: Header
  readonly extensions: HeaderExtensions
  readonly backingFile?: string
}

const invalid = (message: string, field: string, offset?: number): FormatError =>
  new FormatError("InvalidField", message, field, offset)

/**
 * Decodes and validates only the fixed header (qcow2.txt "Header"): magic,
 * version, cluster_bits, sizes and their QEMU limits, table alignment,
 * header_length, refcount_order, crypt_method, backing name placement and the
 * consistency of feature bits with compression_type. Needs 72 bytes for v2
 * and header_length bytes for v3 (Truncated otherwise).
 */
export function decodeHeader(bytes: Uint8Array): Header {
  need(bytes, 0, 8, "magic")
  if (u32(bytes, 0) !== QCOW2_MAGIC) {
    throw new FormatError("BadMagic", "not a qcow2 image (bad magic)", "magic", 0)
  }
  const version = u32(bytes, 4)
  if (version !== 2 && version !== 3) {
    throw new FormatError("UnsupportedVersion", `unsupported qcow2 version ${version}`, "version", 4)
  }
  need(bytes, 0, version === 2 ? V2_HEADER_LENGTH : V3_MIN_HEADER_LENGTH, "header")
  const clusterBits = u32(bytes, 20)
  if (clusterBits < Limits.minClusterBits || clusterBits > Limits.maxClusterBits) {
    throw invalid(`cluster_bits must be ${Limits.minClusterBits}..${Limits.maxClusterBits}, got ${clusterBits}`, "cluster_bits", 20)
  }
  const clusterSize = 2 ** clusterBits
  const backingFileOffset = u64(bytes, 8, "backing_file_offset")
  const backingFileSize = u32(bytes, 16)
  const size = u64(bytes, 24, "size")
  const cryptMethod = u32(bytes, 32)
  const l1Size = u32(bytes, 36)
  const l1TableOffset = u64(bytes, 40, "l1_table_offset")
  const refcountTableOffset = u64(bytes, 48, "refcount_table_offset")
  const refcountTableClusters = u32(bytes, 56)
  const nbSnapshots = u32(bytes, 60)
  const snapshotsOffset = u64(bytes, 64, "snapshots_offset")

  let incompatibleFeatures = 0n
  let compatibleFeatures = 0n
  let autoclearFeatures = 0n
  let refcountOrder = 4
  let headerLength = V2_HEADER_LENGTH
  let compressionType = 0
  let unknownHeaderFields = new Uint8Array(0)
  if (version === 3) {
    incompatibleFeatures = u64big(bytes, 72)
    compatibleFeatures = u64big(bytes, 80)
    autoclearFeatures = u64big(bytes, 88)
    refcountOrder = u32(bytes, 96)
    headerLength = u32(bytes, 100)
    if (headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0) {
      throw invalid(`header_length must be a multiple of 8 and at least ${V3_MIN_HEADER_LENGTH}, got ${headerLength}`, "header_length", 100)
    }
    if (headerLength > clusterSize) {
      throw invalid(`header_length ${headerLength} exceeds the cluster size ${clusterSize}`, "header_length", 100)
    }
    need(bytes, 0, headerLength, "header")
    if (headerLength > V3_MIN_HEADER_LENGTH) compressionType = bytes[104]!
    if (headerLength > V3_HEADER_LENGTH) unknownHeaderFields = bytes.slice(V3_HEADER_LENGTH, headerLength)
  }

  if (refcountOrder > 6) throw invalid(`refcount_order must be 0..6, got ${refcountOrder}`, "refcount_order", 96)
  if (cryptMethod > CryptMethod.Luks) throw invalid(`Unsupported encryption method ${cryptMethod}`, "crypt_method", 32)
  if ((incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n && clusterBits < 14) {
    throw invalid(`extended L2 entries need cluster_bits >= 14, got ${clusterBits}`, "cluster_bits", 20)
  }
  const hasCompressionBit = (incompatibleFeatures & IncompatibleFeature.CompressionType) !== 0n
  if (compressionType !== 0 && !hasCompressionBit) {
    throw invalid(`compression_type ${compressionType} requires the compression type incompatible bit`, "compression_type", 104)
  }
  if (compressionType === 0 && hasCompressionBit) {
    throw invalid("compression type incompatible bit set but compression_type is 0 (deflate)", "incompatible_features", 72)
  }
  if ((autoclearFeatures & AutoclearFeature.RawExternalData) !== 0n && (incompatibleFeatures & IncompatibleFeature.ExternalDataFile) === 0n) {
    throw invalid("raw external data autoclear bit set without the external data file bit", "autoclear_features", 88)
  }

  if (backingFileOffset !== 0) {
    if (backingFileSize > Limits.maxBackingFileNameLength) {
      throw invalid(`backing file name length ${backingFileSize} exceeds ${Limits.maxBackingFileNameLength}`, "backing_file_size", 16)
    }
    if (backingFileOffset + backingFileSize > clusterSize) {
      throw invalid(`backing file name [${backingFileOffset}, +${backingFileSize}) is not inside the first cluster`, "backing_file_offset", 8)
    }
  }

  if (l1TableOffset % clusterSize !== 0) {
    throw invalid(`l1_table_offset ${l1TableOffset} is not cluster aligned`, "l1_table_offset", 40)
  }
  if (refcountTableOffset % clusterSize !== 0) {
    throw invalid(`refcount_table_offset ${refcountTableOffset} is not cluster aligned`, "refcount_table_offset", 48)
  }
  if (snapshotsOffset % clusterSize !== 0) {
    throw invalid("Snapshot table offset invalid", "snapshots_offset", 64)
  }
  if (l1Size > Limits.maxL1Bytes / 8) {
    throw invalid(`l1_size ${l1Size} exceeds QEMU's limit of ${Limits.maxL1Bytes / 8} entries`, "l1_size", 36)
  }
  if (refcountTableClusters * clusterSize > Limits.maxRefcountTableBytes) {
    throw invalid(`refcount table of ${refcountTableClusters} clusters exceeds ${Limits.maxRefcountTableBytes} bytes`, "refcount_table_clusters", 56)
  }
  if (nbSnapshots > Limits.maxSnapshots) {
    throw invalid("Snapshot table too large", "nb_snapshots", 60)
  }
  const l2Bits = clusterBits - ((incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n ? 4 : 3)
  const needed = Math.ceil(size / 2 ** (clusterBits + l2Bits))
  if (needed > Limits.maxL1Bytes / 8) {
    throw invalid(`virtual size ${size} needs an L1 table larger than QEMU's limit`, "size", 24)
  }
  if (l1Size < needed) {
    throw invalid(`l1_size ${l1Size} is too small for virtual size ${size} (needs ${needed})`, "l1_size", 36)
  }

  return {
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    size,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    unknownHeaderFields
  }
}

/**
 * Decodes the fixed header, the header extensions and the backing file name
 * from the first cluster (qcow2.txt "Header", "Header extensions"). Pass
 * min(fileSize, 2 MiB) bytes or the first cluster. Besides decodeHeader's
 * checks: every extension lies inside the cluster (and before the backing
 * name), known extensions appear at most once, the external data file
 * extension needs incompatible bit 2, and the full disk encryption extension
 * is present exactly when crypt_method is 2 (LUKS). Offsets are not checked
 * against the file size.
 */
export function decodeImageHeader(bytes: Uint8Array): ImageHeader {
  const header = decodeHeader(bytes)
  const clusterSize = 2 ** header.clusterBits
  const end = header.backingFileOffset !== 0 ? header.backingFileOffset : clusterSize
  const { extensions } = decodeHeaderExtensions(bytes, header.headerLength, end)
  if (extensions.externalDataFile !== undefined && (header.incompatibleFeatures & IncompatibleFeature.ExternalDataFile) === 0n) {
    throw invalid("external data file extension present without the external data file incompatible bit", "incompatible_features", 72)
  }
  const isLuks = header.cryptMethod === CryptMethod.Luks
  if (isLuks && extensions.fullDiskEncryption === undefined) {
    throw invalid("Missing CRYPTO header for crypt method 2", "crypt_method", 32)
  }
  if (!isLuks && extensions.fullDiskEncryption !== undefined) {
    throw invalid("CRYPTO header extension only expected with LUKS encryption method", "crypt_method", 32)
  }
  if (header.backingFileOffset === 0) return { header, extensions }
  need(bytes, header.backingFileOffset, header.backingFileSize, "backing_file_name")
  // QEMU reads the name as a C string: it ends at the first NUL byte ("" = no backing file).
  const raw = bytes.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize)
  const nul = raw.indexOf(0)
  const backingFile = fromUtf8(nul < 0 ? raw : raw.subarray(0, nul))
  return { header, extensions, backingFile }
}

/**
 * Encodes the fixed header fields into a header_length-byte array (72 for
 * v2), for in-place header updates. Rejects fields a v2 header cannot carry.
 */
export function encodeHeader(header: Header): Uint8Array {
  const { version, headerLength } = header
  if (version !== 2 && version !== 3) {
    throw new FormatError("UnsupportedVersion", `unsupported qcow2 version ${String(version)}`, "version")
  }
  if (version === 2) {
    if (headerLength !== V2_HEADER_LENGTH) throw invalid(`a v2 header is ${V2_HEADER_LENGTH} bytes, got header_length ${headerLength}`, "header_length")
    if (header.refcountOrder !== 4) throw invalid(`v2 images always have refcount_order 4, got ${header.refcountOrder}`, "refcount_order")
    if (header.incompatibleFeatures !== 0n || header.compatibleFeatures !== 0n || header.autoclearFeatures !== 0n) {
      throw invalid("v2 images have no feature bits", "incompatible_features")
    }
    if (header.compressionType !== 0) throw invalid("v2 images only support deflate compression", "compression_type")
    if (header.unknownHeaderFields.length !== 0) throw invalid("v2 headers have no additional fields", "header_length")
  } else {
    if (!Number.isInteger(headerLength) || headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0) {
      throw invalid(`header_length must be a multiple of 8 and at least ${V3_MIN_HEADER_LENGTH}, got ${headerLength}`, "header_length")
    }
    const unknownLength = Math.max(0, headerLength - V3_HEADER_LENGTH)
    if (header.unknownHeaderFields.length !== unknownLength) {
      throw invalid(`unknownHeaderFields must be ${unknownLength} bytes for header_length ${headerLength}`, "header_length")
    }
    if (headerLength === V3_MIN_HEADER_LENGTH && header.compressionType !== 0) {
      throw invalid("compression_type needs header_length >= 112", "compression_type")
    }
    if (header.refcountOrder < 0 || header.refcountOrder > 6 || !Number.isInteger(header.refcountOrder)) {
      throw invalid(`refcount_order must be 0..6, got ${header.refcountOrder}`, "refcount_order")
    }
    if (!Number.isInteger(header.compressionType) || header.compressionType < 0 || header.compressionType > 255) {
      throw invalid(`compression_type must fit one byte, got ${header.compressionType}`, "compression_type")
    }
  }
  checkU32(header.backingFileSize, "backing_file_size")
  checkU32(header.clusterBits, "cluster_bits")
  checkU32(header.cryptMethod, "crypt_method")
  checkU32(header.l1Size, "l1_size")
  checkU32(header.refcountTableClusters, "refcount_table_clusters")
  checkU32(header.nbSnapshots, "nb_snapshots")
  const out = new Uint8Array(headerLength)
  putU32(out, 0, QCOW2_MAGIC)
  putU32(out, 4, version)
  putU64(out, 8, header.backingFileOffset, "backing_file_offset")
  putU32(out, 16, header.backingFileSize)
  putU32(out, 20, header.clusterBits)
  putU64(out, 24, header.size, "size")
  putU32(out, 32, header.cryptMethod)
  putU32(out, 36, header.l1Size)
  putU64(out, 40, header.l1TableOffset, "l1_table_offset")
  putU64(out, 48, header.refcountTableOffset, "refcount_table_offset")
  putU32(out, 56, header.refcountTableClusters)
  putU32(out, 60, header.nbSnapshots)
  putU64(out, 64, header.snapshotsOffset, "snapshots_offset")
  if (version === 3) {
    putU64big(out, 72, header.incompatibleFeatures)
    putU64big(out, 80, header.compatibleFeatures)
    putU64big(out, 88, header.autoclearFeatures)
    putU32(out, 96, header.refcountOrder)
    putU32(out, 100, headerLength)
    if (headerLength > V3_MIN_HEADER_LENGTH) out[104] = header.compressionType
    if (headerLength > V3_HEADER_LENGTH) out.set(header.unknownHeaderFields, V3_HEADER_LENGTH)
  }
  return out
}

/**
 * Serialises header + extensions + end marker + backing file name, exactly
 * the bytes needed (not padded to the cluster). backing_file_offset/size are
 * derived from `backingFile` (0/0 without one), overriding the header's
 * values. DoesNotFit when the result exceeds the cluster size.
 */
export function encodeImageHeader(image: ImageHeader): Uint8Array {
  const clusterSize = 2 ** image.header.clusterBits
  const exts = encodeHeaderExtensions(image.extensions)
  const name = image.backingFile !== undefined ? utf8(image.backingFile) : undefined
  if (name !== undefined && name.length > Limits.maxBackingFileNameLength) {
    throw invalid(`backing file name is ${name.length} bytes, more than ${Limits.maxBackingFileNameLength}`, "backing_file_size")
  }
  const extStart = image.header.headerLength
  const nameOffset = extStart + exts.length
  const total = nameOffset + (name?.length ?? 0)
  const header: Header = {
    ...image.header,
    backingFileOffset: name !== undefined ? nameOffset : 0,
    backingFileSize: name?.length ?? 0
  }
  const fixed = encodeHeader(header)
  if (total > clusterSize) {
    throw new FormatError("DoesNotFit", `header, extensions and backing name need ${total} bytes, the cluster has ${clusterSize}`, "header")
  }
  const out = new Uint8Array(total)
  out.set(fixed, 0)
  out.set(exts, extStart)
  if (name !== undefined) out.set(name, nameOffset)
  return out
}
