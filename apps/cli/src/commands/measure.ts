/**
 * `qcow2 measure`: qemu-img measure. The size a new image needs (required:
 * metadata for the whole disk plus the clusters the input really uses;
 * fully allocated; and for a qcow2 v3 input and target the room its
 * persistent bitmaps take), from --size or an input image, computed as
 * QEMU's qcow2_measure / raw_measure do.
 */
import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import type { BitmapDirectoryEntry } from "@qcow2/format"
import { luksLayout } from "@qcow2/crypto"
import { parseCreateOptions, type OptionValues } from "../createopts.js"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import { print } from "../output.js"
import { reportLine } from "../report.js"
import { QDict, toQemuJson } from "../text/qjson.js"
import { loadConvertSnapshot, type SnapshotSelector } from "./snapshot.js"

export interface MeasureOptions {
  /** The input image, or undefined with `size`. */
  readonly file?: string
  readonly format?: CliFormat
  readonly outFormat: string
  readonly options: ReadonlyArray<string>
  /** --size: virtual size of a new, empty image. */
  readonly size?: number
  readonly output: "human" | "json"
  readonly passphrase?: Uint8Array
  /** -l: measure this internal snapshot of the input (loaded as qemu-img's bdrv_snapshot_load_tmp). */
  readonly snapshot?: SnapshotSelector
}

export interface Measurement {
  readonly required: number
  readonly fullyAllocated: number
  /** Present when input and output both keep persistent bitmaps (qcow2 v3). */
  readonly bitmaps?: number
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to

/** Refcount table and block bytes for `clusters` clusters, at QEMU's fixed point (qcow2_refcount_metadata_size). */
export const refcountMetadataSize = (clusters: number, clusterSize: number, refcountOrder: number): number => {
  const blocksPerTableCluster = clusterSize / 8
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder
  let table = 0
  let blocks = 0
  let n = 0
  let last: number
  do {
    last = n
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock)
    table = Math.ceil(blocks / blocksPerTableCluster)
    n = clusters + blocks + table
  } while (n !== last)
  return (blocks + table) * clusterSize
}

/** Bytes of a fully allocated image: header, L2 and L1 tables, refcounts and data (qcow2_calc_prealloc_size). */
export const fullyAllocatedSize = (size: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number => {
  const l2EntrySize = extendedL2 ? 16 : 8
  const aligned = roundUp(size, clusterSize)
  let meta = clusterSize
  const l2Entries = roundUp(aligned / clusterSize, clusterSize / l2EntrySize)
  meta += l2Entries * l2EntrySize
  const l1Entries = roundUp((l2Entries * l2EntrySize) / clusterSize, clusterSize / 8)
  meta += l1Entries * 8
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountOrder)
  return meta + aligned
}

/**
 * Room for an input's persistent bitmaps in a new image of `clusterSize`:
 * every bitmap fully allocated, its table, and the directory
 * (qcow2_get_persistent_dirty_bitmap_size).
 */
export const bitmapsSize = (bitmaps: ReadonlyArray<BitmapDirectoryEntry>, virtualSize: number, clusterSize: number): number => {
  let total = 0
  let directory = 0
  for (const b of bitmaps) {
    const granularity = 2 ** b.granularityBits
    const bytes = Math.ceil(Math.ceil(virtualSize / granularity) / 8)
    const clusters = Math.ceil(bytes / clusterSize)
    total += clusters * clusterSize + roundUp(clusters * 8, clusterSize)
    directory += roundUp(24 + new TextEncoder().encode(b.name).length, 8)
  }
  return total + roundUp(directory, clusterSize)
}

/** Bytes of the LUKS area a new encrypted image starts with (key bytes from the cipher, xts doubling them). */
const luksPayload = (values: OptionValues, clusterSize: number): number => {
  const alg = values.get("encrypt.cipher-alg") ?? "aes-256"
  const mode = values.get("encrypt.cipher-mode") ?? "xts"
  const bits = Number(/(\d+)$/.exec(alg)?.[1] ?? 256)
  const keyBytes = (bits / 8) * (mode === "xts" ? 2 : 1)
  return roundUp(luksLayout(keyBytes).payloadOffset * 512, clusterSize)
}

/** Clusters of `input` that hold data (zeros and unallocated ranges need none), in bytes. */
const usedBytes = (input: Image, clusterSize: number): Effect.Effect<number, CliFailure> =>
  Effect.gen(function* () {
    const size = input.virtualSize
    let required = 0
    let pnum = 0
    for (let offset = 0; offset < size; offset += pnum) {
      const s = yield* input.blockStatus(offset, size - offset).pipe(Effect.mapError((e) => fail(`Unable to get block status: ${e.message}`)))
      pnum = Math.max(1, Math.min(s.length, size - offset))
      if (s.zero) continue
      if (s.data && s.present) {
        pnum = roundUp(offset + pnum, clusterSize) - offset
        required += (offset % clusterSize) + pnum
      }
    }
    return required
  })

const qcow2Measure = (values: OptionValues, input: Image | undefined): Effect.Effect<Measurement, CliFailure> =>
  Effect.gen(function* () {
    const extendedL2 = values.get("extended_l2") === "on"
    const clusterSize = Number(values.get("cluster_size") ?? 65536)
    if (!(clusterSize >= 512 && clusterSize <= 2 * 1024 * 1024 && (clusterSize & (clusterSize - 1)) === 0)) {
      return yield* Effect.fail(fail("Cluster size must be a power of two between 512 and 2048k"))
    }
    if (extendedL2 && clusterSize < 16384) {
      return yield* Effect.fail(fail("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"))
    }
    const compat = values.get("compat")
    let version = 3
    if (compat === "0.10") version = 2
    else if (compat !== undefined && compat !== "1.1") return yield* Effect.fail(fail(`Invalid compatibility level: '${compat}'`))
    const refcountBits = Number(values.get("refcount_bits") ?? 16)
    if (!(refcountBits >= 1 && refcountBits <= 64 && (refcountBits & (refcountBits - 1)) === 0)) {
      return yield* Effect.fail(fail("Refcount width must be a power of two and may not exceed 64 bits"))
    }
    if (version < 3 && refcountBits !== 16) {
      return yield* Effect.fail(fail("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"))
    }
    const prealloc = values.get("preallocation") ?? "off"
    if (!["off", "metadata", "falloc", "full"].includes(prealloc)) return yield* Effect.fail(fail(`Parameter 'preallocation' does not accept value '${prealloc}'`))
    const hasBacking = values.has("backing_file")
    const luks = values.get("encrypt.format") === "luks" ? luksPayload(values, clusterSize) : 0
    let virtualSize = roundUp(Number(values.get("size") ?? 0), clusterSize)
    const l2Tables = Math.ceil(virtualSize / clusterSize / (clusterSize / (extendedL2 ? 16 : 8)))
    if (l2Tables * 8 > 32 * 1024 * 1024) return yield* Effect.fail(fail("The image size is too large (try using a larger cluster size)"))
    let required = 0
    if (input !== undefined) {
      virtualSize = roundUp(input.virtualSize, clusterSize)
      required = hasBacking ? virtualSize : yield* usedBytes(input, clusterSize)
    }
    if (prealloc === "full" || prealloc === "falloc") required = virtualSize
    const fullyAllocated = luks + fullyAllocatedSize(virtualSize, clusterSize, Math.log2(refcountBits), extendedL2)
    const measurement: Measurement = { required: fullyAllocated - virtualSize + required, fullyAllocated }
    // Bitmaps count when both sides keep them: a qcow2 v3 input and target.
    if (version >= 3 && input !== undefined && input.format === "qcow2" && input.header !== undefined && input.header.header.version >= 3) {
      const details = yield* input.formatSpecific().pipe(Effect.mapError((e) => fail(e.message)))
      return { ...measurement, bitmaps: bitmapsSize(details.bitmaps ?? [], input.virtualSize, clusterSize) }
    }
    return measurement
  })

/** `qcow2 measure`: prints the sizes as qemu-img measure does (human or JSON). */
export const runMeasure = (o: MeasureOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const input = o.file !== undefined ? yield* open(o.file, { readOnly: true, format: o.format, passphrase: o.passphrase }) : undefined
      if (input !== undefined && o.snapshot !== undefined) yield* loadConvertSnapshot([input], o.snapshot)
      if (o.outFormat !== "qcow2" && o.outFormat !== "raw") return yield* Effect.fail(fail(`Unknown file format '${o.outFormat}'`))
      const parsed = parseCreateOptions(o.outFormat, o.options)
      if (!parsed.ok) {
        reportLine(parsed.message)
        return yield* Effect.fail(fail(`Invalid options for file format '${o.outFormat}'`))
      }
      const values = parsed.values
      if (o.size !== undefined) values.set("size", String(o.size))
      let m: Measurement
      if (o.outFormat === "raw") {
        const required = input !== undefined ? input.virtualSize : roundUp(Number(values.get("size") ?? 0), 512)
        m = { required, fullyAllocated: required }
      } else {
        m = yield* qcow2Measure(values, input)
      }
      // Sizes past 2^53 print as the integers the doubles hold (C prints the uint64).
      const required = BigInt(m.required)
      const fully = BigInt(m.fullyAllocated)
      const bitmaps = m.bitmaps !== undefined ? BigInt(m.bitmaps) : undefined
      if (o.output === "json") {
        print(toQemuJson(QDict.of([["bitmaps", bitmaps], ["required", required], ["fully-allocated", fully]])) + "\n")
      } else {
        print(`required size: ${required}\nfully allocated size: ${fully}\n${bitmaps !== undefined ? `bitmaps size: ${bitmaps}\n` : ""}`)
      }
      return 0
    })
  )
