/** Header magic "QFI\xfb" (qcow2.txt "Header", bytes 0-3). */
export const QCOW2_MAGIC = 0x514649fb

/** incompatible_features bits (qcow2.txt "Header", bytes 72-79). */
export const IncompatibleFeature = {
  Dirty: 1n,
  Corrupt: 2n,
  ExternalDataFile: 4n,
  CompressionType: 8n,
  ExtendedL2: 16n
} as const

/** Union of the incompatible feature bits this package understands. */
export const KNOWN_INCOMPATIBLE_FEATURES = 31n

/** compatible_features bits (qcow2.txt "Header", bytes 80-87). */
export const CompatibleFeature = { LazyRefcounts: 1n } as const

/** Union of the compatible feature bits this package understands. */
export const KNOWN_COMPATIBLE_FEATURES = 1n

/** autoclear_features bits (qcow2.txt "Header", bytes 88-95). */
export const AutoclearFeature = { Bitmaps: 1n, RawExternalData: 2n } as const

/** Union of the autoclear feature bits this package understands. */
export const KNOWN_AUTOCLEAR_FEATURES = 3n

/** Header extension type codes (qcow2.txt "Header extensions"). */
export const HeaderExtensionType = {
  End: 0,
  BackingFormat: 0xe2792aca,
  FeatureNameTable: 0x6803f857,
  Bitmaps: 0x23852875,
  FullDiskEncryption: 0x0537be77,
  ExternalDataFile: 0x44415441
} as const

/** compression_type values (qcow2.txt "Additional fields", byte 104). */
export const CompressionType = { Deflate: 0, Zstd: 1 } as const

/** crypt_method values (qcow2.txt "Header", bytes 32-35). */
export const CryptMethod = { None: 0, Aes: 1, Luks: 2 } as const

const MiB = 1024 * 1024

/** QEMU's implementation limits (block/qcow2.h), used to bound untrusted sizes. */
export const Limits = {
  minClusterBits: 9,
  maxClusterBits: 21,
  maxL1Bytes: 32 * MiB,
  maxRefcountTableBytes: 8 * MiB,
  maxSnapshots: 65536,
  maxSnapshotTableBytes: 64 * MiB,
  maxBackingFileNameLength: 1023,
  maxHostOffset: 2 ** 56,
  maxBitmaps: 65535
} as const

/** Size of the fixed v2 header. */
export const V2_HEADER_LENGTH = 72
/** Smallest v3 header_length (fields through header_length). */
export const V3_MIN_HEADER_LENGTH = 104
/** header_length of the v3 header this package knows fully (through compression_type + padding). */
export const V3_HEADER_LENGTH = 112
