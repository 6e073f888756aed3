/**
 * The header checks QEMU's qcow2_do_open makes before it uses a header, in
 * its order and with its messages ("Reference count table offset invalid",
 * "L1 table is too small" …), read straight from the bytes with 64-bit
 * arithmetic so that values past what this toolkit can address still get
 * QEMU's verdict. The decoder of @qcow2/format checks more afterwards;
 * this only decides which message a header QEMU refuses gets.
 */

/** QEMU's limits (block/qcow2.h): 8 MiB refcount table, 32 MiB L1 table, 65536 snapshots. */
const MAX_REFTABLE_BYTES = 8n << 20n
const MAX_L1_BYTES = 32n << 20n
const MAX_SNAPSHOTS = 65536n
const SNAPSHOT_HEADER_BYTES = 40n
const INT64_MAX = (1n << 63n) - 1n
const INT_MAX = (1n << 31n) - 1n

const u32 = (b: Uint8Array, o: number): bigint => BigInt(((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0)
const u64 = (b: Uint8Array, o: number): bigint => (u32(b, o) << 32n) | u32(b, o + 4)

/** qcow2_validate_table: the table's size, then its offset (aligned, and its end representable). */
const validateTable = (offset: bigint, entries: bigint, entryBytes: bigint, maxBytes: bigint, clusterSize: bigint, name: string): string | undefined => {
  if (entries > maxBytes / entryBytes) return `${name} too large`
  if (INT64_MAX - entries * entryBytes < offset || offset % clusterSize !== 0n) return `${name} offset invalid`
  return undefined
}

/**
 * The extension area [start, end) as qcow2_read_extensions walks it: each
 * extension's length must fit what is left of the area.
 */
const checkExtensions = (header: Uint8Array, start: number, end: number): string | undefined => {
  let offset = start
  while (offset < end) {
    if (offset + 8 > header.length) return undefined
    const magic = Number(u32(header, offset))
    const length = Number(u32(header, offset + 4))
    offset += 8
    if (offset > end || length > end - offset) return "Header extension too large"
    if (magic === 0) return undefined
    // The backing format name must fit QEMU's 16-byte buffer.
    if (magic === 0xe2792aca && length >= 16) return `ERROR: ext_backing_format: len=${length} too large (>=16)`
    offset += (length + 7) & ~7
  }
  return undefined
}

/**
 * validate_compression_type, right after the backing file offset: the
 * type must be one QEMU knows (0 zlib, 1 zstd; the byte is read only when
 * the header is long enough to hold it), and the incompatible bit 3 set
 * exactly when it is not zlib. An unknown type is ENOTSUP in QEMU, a
 * refusal even in check mode.
 */
const compressionTypeRefusal = (header: Uint8Array, version: bigint, headerLength: bigint): HeaderRefusal | undefined => {
  const type = version === 3n && headerLength > 104n && header.length > 104 ? header[104]! : 0
  if (type > 1) return { reason: "Unsupported", message: `qcow2: unknown compression type: ${type}` }
  const bitSet = version === 3n && (u64(header, 72) & 8n) !== 0n
  if (type === 0 && bitSet) return { reason: "Corrupt", message: "qcow2: Compression type incompatible feature bit must not be set" }
  if (type !== 0 && !bitSet) return { reason: "Corrupt", message: "qcow2: Compression type incompatible feature bit must be set" }
  return undefined
}

/** Why qcow2_do_open refuses a header: something it does not know (a version, a compression type, an encryption method), or a header it holds to be corrupt. */
export interface HeaderRefusal {
  readonly reason: "Unsupported" | "Corrupt"
  readonly message: string
}

/**
 * QEMU's verdict on a header of cluster 0 (`header`, at least the first
 * cluster or the whole file if shorter) that qcow2_do_open refuses, or
 * undefined. A bad magic is left to the decoder, which names the file as
 * not qcow2 ("Image is not in qcow2 format"), as QEMU checks the magic
 * first. `checking`: opened for qemu-img check, which skips the table
 * checks a repair may need to get past.
 */
export const qemuHeaderRefusal = (header: Uint8Array, checking: boolean): HeaderRefusal | undefined => {
  if (header.length < 72 || u32(header, 0) !== QCOW2_MAGIC) return undefined
  const version = u32(header, 4)
  if (version < 2n || version > 3n) return { reason: "Unsupported", message: `Unsupported qcow2 version ${version}` }
  return headerRefusal(header, version, checking)
}

const QCOW2_MAGIC = 0x514649fbn

const headerRefusal = (header: Uint8Array, version: bigint, checking: boolean): HeaderRefusal | undefined => {
  const corrupt = (message: string): HeaderRefusal => ({ reason: "Corrupt", message })
  const clusterBits = u32(header, 20)
  if (clusterBits < 9n || clusterBits > 21n) return corrupt(`Unsupported cluster size: 2^${clusterBits}`)
  const clusterSize = 1n << clusterBits
  const headerLength = version === 2n ? 72n : header.length >= 104 ? u32(header, 100) : 0n
  if (version === 3n && headerLength < 104n) return corrupt("qcow2 header too short")
  if (headerLength > clusterSize) return corrupt("qcow2 header exceeds cluster size")
  const backingOffset = u64(header, 8)
  if (backingOffset > clusterSize) return corrupt("Invalid backing file offset")
  const extensionsEnd = backingOffset !== 0n ? backingOffset : clusterSize
  const compression = compressionTypeRefusal(header, version, headerLength)
  if (compression !== undefined) return compression
  if (version === 3n && u32(header, 96) > 6n) return corrupt("Reference count entry width too large; may not exceed 64 bits")
  const reftableClusters = u32(header, 56)
  if (reftableClusters === 0n && !checking) return corrupt("Image does not contain a reference count table")
  const reftable = validateTable(u64(header, 48), reftableClusters * clusterSize, 1n, MAX_REFTABLE_BYTES, clusterSize, "Reference count table")
  if (reftable !== undefined) return corrupt(reftable)
  if (!checking) {
    const snapshots = validateTable(u64(header, 64), u32(header, 60), SNAPSHOT_HEADER_BYTES, MAX_SNAPSHOTS * SNAPSHOT_HEADER_BYTES, clusterSize, "Snapshot table")
    if (snapshots !== undefined) return corrupt(snapshots)
  }
  const l1Size = u32(header, 36)
  const l1 = validateTable(u64(header, 40), l1Size, 8n, MAX_L1_BYTES, clusterSize, "Active L1 table")
  if (l1 !== undefined) return corrupt(l1)
  // Extended L2 entries (incompatible bit 4) are twice as large: an L2 table maps half as much.
  const extendedL2 = version === 3n && (u64(header, 72) & 16n) !== 0n
  const l2Bits = clusterBits - (extendedL2 ? 4n : 3n)
  const size = u64(header, 24)
  const perL1Entry = 1n << (clusterBits + l2Bits)
  const l1Needed = (size + perL1Entry - 1n) / perL1Entry
  if (l1Needed > INT_MAX) return corrupt("Image is too big")
  if (l1Size < l1Needed) return corrupt("L1 table is too small")
  // qcow2_update_options, then the full qcow2_read_extensions, come after the L1 table is read.
  const cryptMethod = u32(header, 32)
  if (cryptMethod > 2n) return { reason: "Unsupported", message: `Unsupported encryption method ${cryptMethod}` }
  if (version === 3n) {
    const bad = checkExtensions(header, Number(headerLength), Number(extensionsEnd))
    if (bad !== undefined) return corrupt(bad)
  }
  if (backingOffset !== 0n) {
    const length = u32(header, 16)
    const room = clusterSize - backingOffset
    if (length > (room < 1023n ? room : 1023n)) return corrupt("Backing file name too long")
  }
  return undefined
}
