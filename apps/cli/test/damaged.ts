/**
 * A generator of damaged images and a differential runner against
 * qemu-img / qemu-io (used by damaged.test.ts).
 *
 * Base images are made by qemu-img and qemu-io; `parseLayout` finds their
 * metadata with its own small reader (independent of @qcow2/format, so a
 * decoding bug there cannot hide a target); a `Damage` names patches
 * relative to that layout (header fields, extension lengths, backing name,
 * L1/L2/refcount-table/refcount-block entries, snapshot and bitmap tables,
 * bit flips in metadata clusters) and `applyDamage` turns it into bytes.
 * `runCase` runs the same commands with both tools, each on its own copy,
 * and `compare` lists where the qcow2 CLI misbehaves or disagrees.
 */
import { execFile, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { BUNDLE } from "./helpers.js"

// ---------------------------------------------------------------- base images

type Step = readonly [tool: "qemu-img" | "qemu-io", ...args: string[]]
const img = (...args: string[]): Step => ["qemu-img", ...args]
const io = (file: string, ...cmds: string[]): Step => ["qemu-io", ...cmds.flatMap((c) => ["-c", c]), file]

export interface Base {
  readonly name: string
  readonly file: string
  readonly steps: ReadonlyArray<Step>
}

/** Files every base may need (backing files); made once before the bases. */
const SHARED: ReadonlyArray<Step> = [
  img("create", "-q", "-f", "raw", "back.raw", "1M"),
  ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "back.raw"],
  img("create", "-q", "-f", "qcow2", "src.qcow2", "1M"),
  io("src.qcow2", "write -P 0x44 0 256k", "write -P 0x45 512k 64k")
]

/** Small qemu-made images, 1 MiB virtual; data in the first 64 KiB (read) and around 64 KiB (written). */
export const BASES: ReadonlyArray<Base> = [
  {
    name: "v2, 64k clusters, data",
    file: "v2.qcow2",
    steps: [img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M"), io("v2.qcow2", "write -P 0x11 0 96k", "write -P 0x12 512k 4k")]
  },
  {
    name: "v2, 4k clusters, raw backing file",
    file: "v2b.qcow2",
    steps: [
      img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", "-b", "back.raw", "-F", "raw", "v2b.qcow2", "1M"),
      io("v2b.qcow2", "write -P 0x21 4k 8k", "write -P 0x22 68k 4k")
    ]
  },
  {
    name: "v3, 64k clusters, data",
    file: "v3.qcow2",
    steps: [img("create", "-q", "-f", "qcow2", "v3.qcow2", "1M"), io("v3.qcow2", "write -P 0x31 0 96k", "write -z 512k 64k")]
  },
  {
    name: "v3, 4k clusters, raw backing file, zero cluster",
    file: "ovl.qcow2",
    steps: [
      img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "back.raw", "-F", "raw", "ovl.qcow2", "1M"),
      io("ovl.qcow2", "write -P 0x33 4k 8k", "write -z 16k 4k", "write -P 0x34 64k 4k")
    ]
  },
  {
    name: "v3, 4k clusters, compressed clusters",
    file: "comp.qcow2",
    steps: [img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", "src.qcow2", "comp.qcow2")]
  },
  {
    name: "v3, 4k clusters, internal snapshot",
    file: "snap.qcow2",
    steps: [
      img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "snap.qcow2", "1M"),
      io("snap.qcow2", "write -P 0x55 0 16k", "write -P 0x56 64k 4k"),
      img("snapshot", "-c", "s1", "snap.qcow2"),
      io("snap.qcow2", "write -P 0x57 4k 4k")
    ]
  },
  {
    name: "v3, 16k clusters, extended L2",
    file: "ext.qcow2",
    steps: [
      img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=16k", "ext.qcow2", "1M"),
      io("ext.qcow2", "write -P 0x77 1k 2k", "write -P 0x78 64k 16k", "write -z 32k 1k")
    ]
  },
  {
    name: "v3, refcount_bits=1",
    file: "rc1.qcow2",
    steps: [img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1,cluster_size=4k", "rc1.qcow2", "1M"), io("rc1.qcow2", "write -P 0x91 0 12k", "write -P 0x92 64k 4k")]
  },
  {
    name: "v3, refcount_bits=64",
    file: "rc64.qcow2",
    steps: [img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=64,cluster_size=4k", "rc64.qcow2", "1M"), io("rc64.qcow2", "write -P 0x93 0 12k")]
  },
  {
    name: "v3, 4k clusters, persistent bitmap",
    file: "bm.qcow2",
    steps: [
      img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "bm.qcow2", "1M"),
      io("bm.qcow2", "write -P 0x12 0 8k"),
      img("bitmap", "--add", "bm.qcow2", "b0"),
      io("bm.qcow2", "write -P 0x13 8k 4k", "write -P 0x14 300k 4k")
    ]
  }
]

const runStep = (dir: string, step: Step): void => {
  const [tool, ...args] = step
  const r = spawnSync(tool, args, { cwd: dir, encoding: "utf8" })
  if (r.status !== 0) throw new Error(`${tool} ${args.join(" ")} failed (${r.status}): ${r.stderr}`)
}

/** Makes the files bases share (back.raw, a 1 MiB raw file of 0x5a; src.qcow2) in `dir`. */
export const buildShared = (dir: string): void => {
  for (const s of SHARED) runStep(dir, s)
}

/** Makes the shared files and every base image in `dir`; returns each base's bytes. */
export const buildBases = (dir: string): Map<string, Uint8Array> => {
  buildShared(dir)
  const out = new Map<string, Uint8Array>()
  for (const b of BASES) {
    for (const s of b.steps) runStep(dir, s)
    out.set(b.file, new Uint8Array(fs.readFileSync(path.join(dir, b.file))))
  }
  return out
}

// ---------------------------------------------------------------- layout

const COPIED = 1n << 63n

export interface Ext {
  readonly type: number
  /** File offset of the extension's type field (length at +4, data at +8). */
  readonly at: number
  readonly length: number
}

/** Where the metadata of an (undamaged) image lies; every `…At` list holds file offsets of entries. */
export interface Layout {
  readonly fileSize: number
  readonly version: number
  readonly clusterBits: number
  readonly clusterSize: number
  readonly extendedL2: boolean
  readonly refcountBits: number
  readonly backingOffset: number
  readonly backingSize: number
  readonly extensions: ReadonlyArray<Ext>
  readonly l1EntryAt: ReadonlyArray<number>
  readonly l2EntryAt: ReadonlyArray<number>
  readonly rtEntryAt: ReadonlyArray<number>
  /** Offsets of refcount blocks. */
  readonly refblocks: ReadonlyArray<number>
  /** Offsets of snapshot table entries. */
  readonly snapshotAt: ReadonlyArray<number>
  readonly bitmapDirAt: ReadonlyArray<number>
  readonly bitmapTableEntryAt: ReadonlyArray<number>
  /** File offset of the bitmaps extension's data (nb_bitmaps). */
  readonly bitmapExtAt: number | undefined
  /** Cluster offsets of every metadata cluster (header included). */
  readonly metadata: ReadonlyArray<number>
  /** Cluster offsets of (uncompressed) data clusters. */
  readonly data: ReadonlyArray<number>
}

const be64 = (b: Uint8Array, o: number): bigint => new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(o)
const be32 = (b: Uint8Array, o: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(o)
const be16 = (b: Uint8Array, o: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint16(o)
const OFFSET_MASK = 0x00fffffffffffe00n

/** Reads the layout of a valid qemu-made image (throws on anything unexpected). */
export const parseLayout = (b: Uint8Array): Layout => {
  const version = be32(b, 4)
  const clusterBits = be32(b, 20)
  const cs = 2 ** clusterBits
  const l1Size = be32(b, 36)
  const l1Offset = Number(be64(b, 40))
  const rtOffset = Number(be64(b, 48))
  const rtClusters = be32(b, 56)
  const nbSnapshots = be32(b, 60)
  const snapshotsOffset = Number(be64(b, 64))
  const incompat = version >= 3 ? be64(b, 72) : 0n
  const extendedL2 = (incompat & 16n) !== 0n
  const refcountBits = version >= 3 ? 1 << be32(b, 96) : 16
  const headerLength = version >= 3 ? be32(b, 100) : 72
  const metadata = new Set<number>([0])
  const clustersOf = (off: number, len: number): void => {
    for (let c = Math.floor(off / cs) * cs; c < off + len; c += cs) metadata.add(c)
  }
  const extensions: Ext[] = []
  let bitmapExtAt: number | undefined
  let bitmapDir: { offset: number; size: number } | undefined
  for (let o = headerLength; o + 8 <= cs; ) {
    const type = be32(b, o)
    const length = be32(b, o + 4)
    if (type === 0) break
    extensions.push({ type, at: o, length })
    if (type === 0x23852875) {
      bitmapExtAt = o + 8
      bitmapDir = { size: Number(be64(b, o + 16)), offset: Number(be64(b, o + 24)) }
    }
    o += 8 + Math.ceil(length / 8) * 8
  }
  const l1EntryAt: number[] = []
  const l2Tables = new Set<number>()
  const addL1 = (offset: number, size: number): void => {
    clustersOf(offset, size * 8)
    for (let i = 0; i < size; i++) {
      l1EntryAt.push(offset + i * 8)
      const l2 = Number(be64(b, offset + i * 8) & OFFSET_MASK)
      if (l2 !== 0) l2Tables.add(l2)
    }
  }
  addL1(l1Offset, l1Size)
  const snapshotAt: number[] = []
  let so = snapshotsOffset
  for (let i = 0; i < nbSnapshots; i++) {
    snapshotAt.push(so)
    addL1(Number(be64(b, so)), be32(b, so + 8))
    const len = 40 + be32(b, so + 36) + be16(b, so + 12) + be16(b, so + 14)
    clustersOf(so, len)
    so += Math.ceil(len / 8) * 8
  }
  const entrySize = extendedL2 ? 16 : 8
  const l2EntryAt: number[] = []
  const data = new Set<number>()
  for (const l2 of l2Tables) {
    metadata.add(l2)
    for (let i = 0; i < cs / entrySize; i++) {
      const at = l2 + i * entrySize
      const e = be64(b, at)
      const guest = i * cs // 1 MiB images: one L2 table maps the whole disk
      // Every allocated entry, and the (maybe unallocated) entries under the guest ranges the tests read and write.
      if (e !== 0n || guest < 64 * 1024 + 4096) l2EntryAt.push(at)
      if ((e & (1n << 62n)) === 0n && (e & OFFSET_MASK) !== 0n) data.add(Number(e & OFFSET_MASK))
    }
  }
  clustersOf(rtOffset, rtClusters * cs)
  const rtEntryAt: number[] = []
  const refblocks: number[] = []
  for (let i = 0; i < (rtClusters * cs) / 8; i++) {
    const e = Number(be64(b, rtOffset + i * 8) & ~0x1ffn)
    if (e === 0) continue
    rtEntryAt.push(rtOffset + i * 8)
    refblocks.push(e)
    metadata.add(e)
  }
  if (rtEntryAt.length < 2) rtEntryAt.push(rtOffset + 8) // an unused entry too
  const bitmapDirAt: number[] = []
  const bitmapTableEntryAt: number[] = []
  if (bitmapDir !== undefined) {
    clustersOf(bitmapDir.offset, bitmapDir.size)
    for (let o = bitmapDir.offset; o < bitmapDir.offset + bitmapDir.size; ) {
      bitmapDirAt.push(o)
      const tableOffset = Number(be64(b, o))
      const tableSize = be32(b, o + 8)
      clustersOf(tableOffset, tableSize * 8)
      for (let i = 0; i < tableSize; i++) {
        bitmapTableEntryAt.push(tableOffset + i * 8)
        const e = Number(be64(b, tableOffset + i * 8) & OFFSET_MASK)
        if (e !== 0) metadata.add(e)
      }
      o += Math.ceil((24 + be32(b, o + 20) + be16(b, o + 18)) / 8) * 8
    }
  }
  return {
    fileSize: b.length,
    version,
    clusterBits,
    clusterSize: cs,
    extendedL2,
    refcountBits,
    backingOffset: Number(be64(b, 8)),
    backingSize: be32(b, 16),
    extensions,
    l1EntryAt,
    l2EntryAt,
    rtEntryAt,
    refblocks,
    snapshotAt,
    bitmapDirAt,
    bitmapTableEntryAt,
    bitmapExtAt,
    metadata: [...metadata].sort((x, y) => x - y),
    data: [...data].sort((x, y) => x - y)
  }
}

// ---------------------------------------------------------------- damage

/** A value for a field or entry, resolved against the layout and the field's current value. */
export type Value =
  | { readonly v: "const"; readonly c: bigint }
  | { readonly v: "meta"; readonly i: number; readonly copied: boolean }
  | { readonly v: "data"; readonly i: number; readonly copied: boolean }
  | { readonly v: "pastEof"; readonly k: number; readonly copied: boolean }
  | { readonly v: "or"; readonly bits: bigint }
  | { readonly v: "xor"; readonly bits: bigint }
  | { readonly v: "add"; readonly d: bigint }
  | { readonly v: "random"; readonly r: bigint }

export type Damage =
  | { readonly k: "header"; readonly field: number; readonly value: Value }
  | { readonly k: "backingName"; readonly pos: number }
  | { readonly k: "extLen"; readonly which: number; readonly value: Value }
  | { readonly k: "l1" | "l2" | "rt" | "bitmapTable"; readonly which: number; readonly value: Value }
  | { readonly k: "refblock"; readonly which: number; readonly entry: number; readonly value: Value }
  | { readonly k: "snapshot"; readonly which: number; readonly field: number; readonly value: Value }
  | { readonly k: "bitmapDir"; readonly which: number; readonly field: number; readonly value: Value }
  | { readonly k: "bitmapExt"; readonly field: number; readonly value: Value }
  | { readonly k: "flip"; readonly cluster: number; readonly bits: ReadonlyArray<number> }

interface Field {
  readonly name: string
  readonly at: number
  readonly width: 1 | 2 | 4 | 8
  readonly v3?: boolean
}

export const HEADER_FIELDS: ReadonlyArray<Field> = [
  { name: "version", at: 4, width: 4 },
  { name: "backing_file_offset", at: 8, width: 8 },
  { name: "backing_file_size", at: 16, width: 4 },
  { name: "cluster_bits", at: 20, width: 4 },
  { name: "size", at: 24, width: 8 },
  { name: "crypt_method", at: 32, width: 4 },
  { name: "l1_size", at: 36, width: 4 },
  { name: "l1_table_offset", at: 40, width: 8 },
  { name: "refcount_table_offset", at: 48, width: 8 },
  { name: "refcount_table_clusters", at: 56, width: 4 },
  { name: "nb_snapshots", at: 60, width: 4 },
  { name: "snapshots_offset", at: 64, width: 8 },
  { name: "incompatible_features", at: 72, width: 8, v3: true },
  { name: "compatible_features", at: 80, width: 8, v3: true },
  { name: "autoclear_features", at: 88, width: 8, v3: true },
  { name: "refcount_order", at: 96, width: 4, v3: true },
  { name: "header_length", at: 100, width: 4, v3: true },
  { name: "compression_type", at: 104, width: 1, v3: true }
]

const SNAPSHOT_FIELDS: ReadonlyArray<Field> = [
  { name: "l1_table_offset", at: 0, width: 8 },
  { name: "l1_size", at: 8, width: 4 },
  { name: "id_str_size", at: 12, width: 2 },
  { name: "name_size", at: 14, width: 2 },
  { name: "vm_state_size", at: 32, width: 4 },
  { name: "extra_data_size", at: 36, width: 4 },
  { name: "disk_size", at: 48, width: 8 }
]

const BITMAP_DIR_FIELDS: ReadonlyArray<Field> = [
  { name: "bitmap_table_offset", at: 0, width: 8 },
  { name: "bitmap_table_size", at: 8, width: 4 },
  { name: "flags", at: 12, width: 4 },
  { name: "type", at: 16, width: 1 },
  { name: "granularity_bits", at: 17, width: 1 },
  { name: "name_size", at: 18, width: 2 },
  { name: "extra_data_size", at: 20, width: 4 }
]

const BITMAP_EXT_FIELDS: ReadonlyArray<Field> = [
  { name: "nb_bitmaps", at: 0, width: 4 },
  { name: "bitmap_directory_size", at: 8, width: 8 },
  { name: "bitmap_directory_offset", at: 16, width: 8 }
]

const CONSTS: ReadonlyArray<bigint> = [
  0n,
  1n,
  2n,
  7n,
  9n,
  16n,
  22n,
  0x1ffn,
  0x200n,
  0x1000n,
  0x10000n,
  0x7fffffffn,
  0xffffffffn,
  1n << 53n,
  (1n << 53n) + 0x10000n,
  1n << 55n,
  1n << 56n,
  COPIED,
  (1n << 64n) - 1n
]

const valueArb: fc.Arbitrary<Value> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ v: fc.constant("const" as const), c: fc.constantFrom(...CONSTS) }) },
  { weight: 3, arbitrary: fc.record({ v: fc.constant("meta" as const), i: fc.nat(), copied: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ v: fc.constant("data" as const), i: fc.nat(), copied: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ v: fc.constant("pastEof" as const), k: fc.integer({ min: 0, max: 64 }), copied: fc.boolean() }) },
  {
    weight: 4,
    arbitrary: fc.record({
      v: fc.constant("or" as const),
      // zero flag, reserved bits, unaligned, 2^53, bits 55/56, compressed, COPIED
      bits: fc.constantFrom(1n, 2n, 0x100n, 0x200n, 0x800n, 1n << 53n, 1n << 55n, 1n << 56n, 1n << 61n, 1n << 62n, COPIED)
    })
  },
  { weight: 3, arbitrary: fc.record({ v: fc.constant("xor" as const), bits: fc.integer({ min: 0, max: 63 }).map((i) => 1n << BigInt(i)) }) },
  { weight: 2, arbitrary: fc.record({ v: fc.constant("add" as const), d: fc.constantFrom(-0x10000n, -0x1000n, -1n, 1n, 0x200n, 0x1000n, 0x10000n) }) },
  { weight: 1, arbitrary: fc.record({ v: fc.constant("random" as const), r: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }) }
)

export const damageArb: fc.Arbitrary<Damage> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant("header" as const), field: fc.nat(HEADER_FIELDS.length - 1), value: valueArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("backingName" as const), pos: fc.nat(64) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("extLen" as const), which: fc.nat(), value: valueArb }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant("l1" as const), which: fc.nat(), value: valueArb }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant("l2" as const), which: fc.nat(), value: valueArb }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant("rt" as const), which: fc.nat(), value: valueArb }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant("refblock" as const), which: fc.nat(), entry: fc.nat(40), value: valueArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("snapshot" as const), which: fc.nat(), field: fc.nat(SNAPSHOT_FIELDS.length - 1), value: valueArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("bitmapDir" as const), which: fc.nat(), field: fc.nat(BITMAP_DIR_FIELDS.length - 1), value: valueArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("bitmapExt" as const), field: fc.nat(BITMAP_EXT_FIELDS.length - 1), value: valueArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant("bitmapTable" as const), which: fc.nat(), value: valueArb }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant("flip" as const), cluster: fc.nat(), bits: fc.array(fc.nat(), { minLength: 1, maxLength: 8 }) }) }
)

export interface Patch {
  readonly at: number
  readonly bytes: Uint8Array
}

const readField = (b: Uint8Array, at: number, width: number): bigint => {
  if (at + width > b.length) return 0n
  let x = 0n
  for (let i = 0; i < width; i++) x = (x << 8n) | BigInt(b[at + i]!)
  return x
}

const fieldBytes = (x: bigint, width: number): Uint8Array => {
  const v = BigInt.asUintN(width * 8, x)
  const out = new Uint8Array(width)
  for (let i = 0; i < width; i++) out[i] = Number((v >> BigInt(8 * (width - 1 - i))) & 0xffn)
  return out
}

const pick = <A>(xs: ReadonlyArray<A>, i: number): A | undefined => (xs.length === 0 ? undefined : xs[i % xs.length])

const resolve = (value: Value, current: bigint, layout: Layout): bigint => {
  const copied = (c: boolean): bigint => (c ? COPIED : 0n)
  switch (value.v) {
    case "const":
      return value.c
    case "meta":
      return BigInt(pick(layout.metadata, value.i) ?? 0) | copied(value.copied)
    case "data":
      return BigInt(pick(layout.data, value.i) ?? layout.clusterSize) | copied(value.copied)
    case "pastEof":
      return BigInt(Math.ceil(layout.fileSize / layout.clusterSize + value.k) * layout.clusterSize) | copied(value.copied)
    case "or":
      return current | value.bits
    case "xor":
      return current ^ value.bits
    case "add":
      return current + value.d
    case "random":
      return value.r
  }
}

const hex = (x: bigint): string => `0x${BigInt.asUintN(64, x).toString(16)}`

/** The patches of one damage (none when the image has no such structure), and a description. */
export const applyDamage = (b: Uint8Array, layout: Layout, d: Damage): { patches: Patch[]; what: string } => {
  const field = (name: string, at: number, width: number, value: Value): { patches: Patch[]; what: string } => {
    const cur = readField(b, at, width)
    const x = resolve(value, cur, layout)
    return { patches: [{ at, bytes: fieldBytes(x, width) }], what: `${name} @${hex(BigInt(at))}: ${hex(cur)} -> ${hex(BigInt.asUintN(width * 8, x))}` }
  }
  const none = { patches: [], what: `${d.k}: nothing to damage` }
  switch (d.k) {
    case "header": {
      const f = HEADER_FIELDS[d.field]!
      if (f.v3 === true && layout.version < 3) return none
      return field(`header.${f.name}`, f.at, f.width, d.value)
    }
    case "backingName": {
      if (layout.backingOffset !== 0 && layout.backingSize > 0) {
        const at = layout.backingOffset + (d.pos % layout.backingSize)
        return { patches: [{ at, bytes: new Uint8Array([0]) }], what: `backing name byte ${at - layout.backingOffset} -> NUL` }
      }
      // No backing file: add a name with a NUL byte at the end of cluster 0.
      const name = new TextEncoder().encode("back.raw\0x")
      const at = layout.clusterSize - 16
      return {
        patches: [
          { at, bytes: name },
          { at: 8, bytes: fieldBytes(BigInt(at), 8) },
          { at: 16, bytes: fieldBytes(BigInt(name.length), 4) }
        ],
        what: `backing name "back.raw\\0x" added at ${hex(BigInt(at))}`
      }
    }
    case "extLen": {
      const e = pick(layout.extensions, d.which)
      if (e === undefined) return none
      return field(`extension ${hex(BigInt(e.type))}.length`, e.at + 4, 4, d.value)
    }
    case "l1":
    case "l2":
    case "rt":
    case "bitmapTable": {
      const list = d.k === "l1" ? layout.l1EntryAt : d.k === "l2" ? layout.l2EntryAt : d.k === "rt" ? layout.rtEntryAt : layout.bitmapTableEntryAt
      const at = pick(list, d.which)
      if (at === undefined) return none
      return field(`${d.k} entry`, at, 8, d.value)
    }
    case "refblock": {
      const rb = pick(layout.refblocks, d.which)
      if (rb === undefined) return none
      const bits = layout.refcountBits
      const max = (1n << BigInt(bits)) - 1n
      if (bits >= 8) {
        const width = bits / 8
        const r = field(`refblock ${hex(BigInt(rb))} entry ${d.entry}`, rb + d.entry * width, width, d.value)
        return r
      }
      // Sub-byte entries, LSB first.
      const at = rb + Math.floor((d.entry * bits) / 8)
      const shift = BigInt((d.entry * bits) % 8)
      const cur = (BigInt(b[at]!) >> shift) & max
      const x = resolve(d.value, cur, layout) & max
      const byte = (BigInt(b[at]!) & ~(max << shift)) | (x << shift)
      return { patches: [{ at, bytes: new Uint8Array([Number(byte & 0xffn)]) }], what: `refblock ${hex(BigInt(rb))} entry ${d.entry}: ${cur} -> ${x}` }
    }
    case "snapshot": {
      const at = pick(layout.snapshotAt, d.which)
      if (at === undefined) return none
      const f = SNAPSHOT_FIELDS[d.field]!
      return field(`snapshot.${f.name}`, at + f.at, f.width, d.value)
    }
    case "bitmapDir": {
      const at = pick(layout.bitmapDirAt, d.which)
      if (at === undefined) return none
      const f = BITMAP_DIR_FIELDS[d.field]!
      return field(`bitmap_dir.${f.name}`, at + f.at, f.width, d.value)
    }
    case "bitmapExt": {
      if (layout.bitmapExtAt === undefined) return none
      const f = BITMAP_EXT_FIELDS[d.field]!
      return field(`bitmap_ext.${f.name}`, layout.bitmapExtAt + f.at, f.width, d.value)
    }
    case "flip": {
      const c = pick(layout.metadata, d.cluster)!
      const used = Math.min(layout.clusterSize, layout.fileSize - c)
      const patches: Patch[] = []
      const copy = b.slice(c, c + used)
      const where: string[] = []
      for (const bit of d.bits) {
        // Flips land in the first 512 bytes most of the time: that is where tables keep their live entries.
        const pos = bit % 2 === 0 ? Math.floor(bit / 2) % Math.min(512 * 8, used * 8) : bit % (used * 8)
        copy[pos >> 3] = copy[pos >> 3]! ^ (1 << (pos & 7))
        where.push(hex(BigInt(c + (pos >> 3))) + "." + (pos & 7))
      }
      patches.push({ at: c, bytes: copy })
      return { patches, what: `bit flips at ${where.join(" ")}` }
    }
  }
}

export const patched = (b: Uint8Array, patches: ReadonlyArray<Patch>): Uint8Array => {
  const out = b.slice()
  for (const p of patches) {
    if (p.at + p.bytes.length > out.length) continue
    out.set(p.bytes, p.at)
  }
  return out
}

// ---------------------------------------------------------------- running both tools

export interface Exec {
  readonly status: number
  readonly signal: string | null
  readonly stdout: string
  readonly stderr: string
  readonly timedOut: boolean
  /** Peak resident set size in KiB (qcow2 runs only). */
  readonly maxRssKiB: number
}

const run = (cwd: string, cmd: string, args: ReadonlyArray<string>, timeoutMs: number): Promise<Exec> =>
  new Promise((resolve) => {
    const start = performance.now()
    execFile(cmd, args, { cwd, encoding: "latin1", timeout: timeoutMs, maxBuffer: 64 << 20, killSignal: "SIGKILL" }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: string | null; killed?: boolean }) | null
      const status = e === null ? 0 : typeof e.code === "number" ? e.code : -1
      const timedOut = e !== null && e.killed === true && performance.now() - start >= timeoutMs - 50
      resolve({ status, signal: e?.signal ?? null, stdout, stderr, timedOut, maxRssKiB: 0 })
    })
  })

/** Runs the bundled CLI under /usr/bin/time to learn its peak RSS. */
export const runOurs = async (cwd: string, args: ReadonlyArray<string>, timeoutMs = 30_000): Promise<Exec> => {
  const rssFile = path.join(cwd, `.rss-${process.pid}-${Math.random().toString(36).slice(2)}`)
  const r = await run(cwd, "/usr/bin/time", ["-q", "-f", "%M", "-o", rssFile, process.execPath, BUNDLE, ...args], timeoutMs)
  let maxRssKiB = 0
  try {
    maxRssKiB = Number.parseInt(fs.readFileSync(rssFile, "utf8").trim().split("\n").pop() ?? "0", 10) || 0
    fs.rmSync(rssFile)
  } catch {
    // killed before time wrote it
  }
  return { ...r, maxRssKiB }
}

export const runQemu = (cwd: string, tool: string, args: ReadonlyArray<string>, timeoutMs = 30_000): Promise<Exec> => run(cwd, tool, args, timeoutMs)

/** The operations run on every damaged image, each on a fresh copy for each tool. */
export type Op = "info" | "check" | "convert" | "read" | "write" | "repair"
export const OPS: ReadonlyArray<Op> = ["info", "check", "convert", "read", "write", "repair"]

export interface OpResult {
  readonly ours: Exec
  readonly qemu: Exec
  /** convert: both raw outputs; read: both hex dumps; write: both image files after the write. */
  readonly oursOut?: Uint8Array
  readonly qemuOut?: Uint8Array
}

export type CaseResult = Record<Op, OpResult>

const dumpLines = (s: string): string =>
  s
    .split("\n")
    .filter((l) => /^[0-9a-f]{8}:/.test(l))
    .join("\n")

/** Files larger than this are not read back (a write that grew an image to terabytes, sparse). */
export const MAX_READ_BACK = 64 << 20

/** The file's bytes; undefined if missing; for a huge (sparse) file, its first bytes and a `hugeSize` mark. */
const readIf = (p: string): Uint8Array | undefined => {
  if (!fs.existsSync(p)) return undefined
  const size = fs.statSync(p).size
  if (size <= MAX_READ_BACK) return new Uint8Array(fs.readFileSync(p))
  const fd = fs.openSync(p, "r")
  const head = new Uint8Array(4096)
  fs.readSync(fd, head, 0, head.length, 0)
  fs.closeSync(fd)
  return Object.assign(head, { hugeSize: size })
}

const hugeSize = (b: Uint8Array | undefined): number | undefined => (b as { hugeSize?: number } | undefined)?.hugeSize

/**
 * Runs every op on `image` (bytes) in `dir` with both tools (names prefixed
 * with `tag`); the qcow2 runs go two at a time.
 */
export const runCase = async (dir: string, tag: string, image: Uint8Array, ops: ReadonlyArray<Op> = OPS): Promise<Partial<CaseResult>> => {
  const file = (who: string, op: Op): string => `${tag}-${who}-${op}.qcow2`
  for (const op of ops) {
    fs.writeFileSync(path.join(dir, file("q", op)), image)
    fs.writeFileSync(path.join(dir, file("o", op)), image)
  }
  const q: Partial<Record<Op, Exec>> = {}
  const qemuArgs = (op: Op, f: string, pattern: number): [string, string[]] => {
    switch (op) {
      case "info":
        return ["qemu-img", ["info", f]]
      case "check":
        return ["qemu-img", ["check", f]]
      case "convert":
        return ["qemu-img", ["convert", "-O", "raw", f, `${f}.raw`]]
      case "read":
        return ["qemu-io", ["-c", "read -v 0 64k", "-c", `read -P ${pattern} 0 64k`, f]]
      case "write":
        return ["qemu-io", ["-c", "write -P 0xab 64k 4k", f]]
      case "repair":
        return ["qemu-img", ["check", "-r", "all", f]]
    }
  }
  // The pattern for `read -P`: the first byte QEMU reads (0 if it cannot read).
  let pattern = 0
  if (ops.includes("read")) {
    const probe = await runQemu(dir, "qemu-io", ["-r", "-c", "read -v 0 16", file("q", "read")])
    const m = /^00000000:\s+([0-9a-f]{2})/m.exec(probe.stdout)
    if (m !== null) pattern = Number.parseInt(m[1]!, 16)
  }
  for (const op of ops) {
    const [tool, args] = qemuArgs(op, file("q", op), pattern)
    q[op] = await runQemu(dir, tool, args)
  }
  const oursArgs = (op: Op): string[] => {
    const [tool, args] = qemuArgs(op, file("o", op), pattern)
    return tool === "qemu-img" ? args : ["io", ...args]
  }
  const o: Partial<Record<Op, Exec>> = {}
  const queue = [...ops]
  await Promise.all(
    [0, 1].map(async () => {
      for (let op = queue.shift(); op !== undefined; op = queue.shift()) o[op] = await runOurs(dir, oursArgs(op))
    })
  )
  const result: Partial<CaseResult> = {}
  for (const op of ops) {
    const ours = o[op]!
    const qemu = q[op]!
    let oursOut: Uint8Array | undefined
    let qemuOut: Uint8Array | undefined
    if (op === "convert") {
      oursOut = readIf(path.join(dir, `${file("o", op)}.raw`))
      qemuOut = readIf(path.join(dir, `${file("q", op)}.raw`))
    } else if (op === "read") {
      oursOut = new TextEncoder().encode(dumpLines(ours.stdout))
      qemuOut = new TextEncoder().encode(dumpLines(qemu.stdout))
    } else if (op === "write") {
      oursOut = readIf(path.join(dir, file("o", op)))
      qemuOut = readIf(path.join(dir, file("q", op)))
    }
    result[op] = { ours, qemu, ...(oursOut !== undefined ? { oursOut } : {}), ...(qemuOut !== undefined ? { qemuOut } : {}) }
  }
  for (const op of ops) {
    for (const who of ["q", "o"]) {
      fs.rmSync(path.join(dir, file(who, op)), { force: true })
      fs.rmSync(path.join(dir, `${file(who, op)}.raw`), { force: true })
    }
  }
  return result
}

// ---------------------------------------------------------------- verdicts

export interface Finding {
  readonly op: Op
  /** crash | internal-error | timeout | memory | info-exit | check-exit | convert-bytes | read-bytes | read-pattern | write-not-refused | write-modified */
  readonly kind: string
  readonly detail: string
}

/** Peak RSS allowed for one qcow2 run on a ≤ 1 MiB image (Node itself takes ~60-90 MiB). */
export const MAX_RSS_KIB = 400 * 1024

const firstLine = (s: string): string => s.trim().split("\n").slice(0, 2).join(" | ").slice(0, 300)

const checkClass = (s: number): string => (s === 0 || s === 2 || s === 3 ? String(s) : "fails")

const firstDiff = (a: Uint8Array, b: Uint8Array): number => {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i
  return a.length === b.length ? -1 : n
}

/** Where the image changed, ignoring the corrupt bit (bit 1 of incompatible_features, byte 79). */
export const changedBeyondCorruptBit = (before: Uint8Array, after: Uint8Array): number => {
  if (before.length !== after.length) return Math.min(before.length, after.length)
  for (let i = 0; i < before.length; i++) {
    if (before[i] === after[i]) continue
    if (i === 79 && ((before[i]! ^ after[i]!) & ~0x02) === 0) continue
    return i
  }
  return -1
}

const qemuMarkedCorrupt = (before: Uint8Array, r: OpResult): boolean =>
  /Marking image as corrupt|Preventing invalid write|image is corrupt|corrupt/i.test(r.qemu.stderr) ||
  (before.length >= 80 && be32(before, 4) >= 3 && r.qemuOut !== undefined && r.qemuOut.length >= 80 && (r.qemuOut[79]! & 2) !== 0 && (before[79]! & 2) === 0)

/** What the qcow2 CLI did wrong on one damaged image, according to the rules of damaged.test.ts. */
export const compare = (before: Uint8Array, result: Partial<CaseResult>): Finding[] => {
  const out: Finding[] = []
  for (const [op, r] of Object.entries(result) as Array<[Op, OpResult]>) {
    const o = r.ours
    const say = (kind: string, detail: string): void => void out.push({ op, kind, detail })
    if (o.timedOut) say("timeout", `no answer within the timeout`)
    else if (o.signal !== null || o.status < 0 || o.status > 3 || /\n\s+at |FATAL ERROR|heap out of memory|Segmentation/.test(o.stderr)) {
      say("crash", `status ${o.status} signal ${o.signal}: ${firstLine(o.stderr)}`)
    }
    // (not check's "N internal errors have occurred during the check", which QEMU prints too)
    if (/qcow2: internal error/.test(o.stderr)) say("internal-error", firstLine(o.stderr))
    if (o.maxRssKiB > MAX_RSS_KIB) say("memory", `peak RSS ${o.maxRssKiB} KiB`)
    const ourMsg = firstLine(o.stderr)
    const qMsg = firstLine(r.qemu.stderr)
    // QEMU itself crashed (e.g. qcow2-cache.c "Assertion `offset != 0' failed" for an L1 entry that is only COPIED): no verdict.
    if (r.qemu.status < 0 || r.qemu.status >= 128 || r.qemu.signal !== null || /Assertion .* failed/.test(r.qemu.stderr)) continue
    switch (op) {
      case "info":
        if ((o.status === 0) !== (r.qemu.status === 0)) say("info-exit", `ours ${o.status} (${ourMsg}) vs qemu-img ${r.qemu.status} (${qMsg})`)
        break
      case "check":
        if (checkClass(o.status) !== checkClass(r.qemu.status)) {
          say("check-exit", `ours ${o.status} (${ourMsg || firstLine(o.stdout)}) vs qemu-img ${r.qemu.status} (${qMsg || firstLine(r.qemu.stdout)})`)
        }
        break
      case "convert":
        if (hugeSize(r.oursOut) !== undefined || hugeSize(r.qemuOut) !== undefined) {
          if (hugeSize(r.oursOut) !== hugeSize(r.qemuOut)) say("convert-bytes", `raw sizes ${hugeSize(r.oursOut) ?? r.oursOut?.length} vs qemu ${hugeSize(r.qemuOut) ?? r.qemuOut?.length}`)
        } else if (o.status === 0 && r.qemu.status === 0 && r.oursOut !== undefined && r.qemuOut !== undefined) {
          const d = firstDiff(r.oursOut, r.qemuOut)
          if (d >= 0) say("convert-bytes", `sizes ${r.oursOut.length}/${r.qemuOut.length}, first difference at ${d}: ours ${r.oursOut[d]} qemu ${r.qemuOut[d]}`)
        }
        break
      case "read": {
        // qemu-io exits 1 when any command fails; compare the dumps when both printed one.
        const a = r.oursOut!
        const b = r.qemuOut!
        if (a.length > 0 && b.length > 0 && firstDiff(a, b) >= 0) {
          const la = new TextDecoder().decode(a).split("\n")
          const lb = new TextDecoder().decode(b).split("\n")
          const i = la.findIndex((l, j) => l !== lb[j])
          say("read-bytes", `first differing line: ours "${la[i] ?? ""}" qemu "${lb[i] ?? ""}"`)
        }
        if (a.length > 0 && b.length > 0 && o.status !== r.qemu.status) say("read-pattern", `read -P: ours ${o.status} vs qemu-io ${r.qemu.status}`)
        break
      }
      case "write": {
        const grown = hugeSize(r.oursOut)
        if (grown !== undefined && hugeSize(r.qemuOut) === undefined) say("write-growth", `our write grew the image to ${grown} bytes (qemu-io: exit ${r.qemu.status}, ${r.qemuOut?.length} bytes: ${qMsg})`)
        const refused = r.qemu.status !== 0 || qemuMarkedCorrupt(before, r)
        if (!refused) break
        if (o.status === 0) say("write-not-refused", `qemu-io: ${qMsg}; ours: exit 0 ${firstLine(o.stdout)}`)
        // Changes QEMU made too before failing (e.g. COW of an L2 table, then EFBIG on the data) are not held against us.
        if (r.oursOut !== undefined) {
          const at = changedBeyondCorruptBit(before, r.oursOut)
          const sameAsQemu = r.qemuOut !== undefined && changedBeyondCorruptBit(r.qemuOut, r.oursOut) < 0
          if (at >= 0 && !sameAsQemu) say("write-modified", `qemu-io refused (${qMsg}); ours changed the image at byte ${at} (exit ${o.status}: ${ourMsg})`)
        }
        break
      }
      case "repair":
        break
    }
  }
  return out
}
