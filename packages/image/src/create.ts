import { Effect } from "effect"
import type { Scope } from "effect"
import {
  AutoclearFeature,
  CompatibleFeature,
  encodeImageHeader,
  featureNamesFor,
  IncompatibleFeature,
  l1EntriesFor,
  Limits,
  makeGeometry,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  writeRefcount,
  writeRefcountTableEntry
} from "@qcow2/format"
import type { Header, ImageHeader } from "@qcow2/format"
import type { BlockStorageShape } from "@qcow2/storage"
import type { CreateOptions } from "./api.js"
import { ImageError } from "./errors.js"
import { asImageError } from "./internal/errors.js"

/** A validated create request with every default filled in. */
export interface CreatePlan {
  readonly size: number
  readonly clusterBits: number
  readonly version: 2 | 3
  readonly refcountOrder: number
  readonly lazyRefcounts: boolean
  readonly extendedL2: boolean
  readonly compressionType: 0 | 1
  readonly backingFile?: string
  readonly backingFormat?: string
  readonly dataFile?: string
  readonly dataFileRaw: boolean
  readonly preallocation: "off" | "metadata" | "falloc" | "full"
}

const bad = (message: string) => new ImageError({ reason: "InvalidArgument", message })

/**
 * Bytes of zeros QEMU's file driver writes at offset 0 when it grows an
 * empty file without preallocation (file-posix allocate_first_block, so
 * that later alignment probing finds a block): 4096, or one 512-byte sector
 * for a file smaller than that; 0 for an empty file.
 */
export const firstBlockLength = (size: number): number => (size <= 0 ? 0 : size < 4096 ? 512 : 4096)

/** Checks options the way qemu-img does and fills in its defaults. */
export function planCreate(options: CreateOptions, size: number): Effect.Effect<CreatePlan, ImageError> {
  return Effect.gen(function* () {
    const clusterSize = options.clusterSize ?? 65536
    const clusterBits = Math.log2(clusterSize)
    if (!Number.isInteger(clusterBits) || clusterBits < Limits.minClusterBits || clusterBits > Limits.maxClusterBits) {
      return yield* bad("Cluster size must be a power of two between 512 and 2048k")
    }
    const version: 2 | 3 = options.compat === "0.10" ? 2 : 3
    const refcountBits = options.refcountBits ?? 16
    const refcountOrder = Math.log2(refcountBits)
    if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
      return yield* bad("Refcount width must be a power of two and may not exceed 64 bits")
    }
    if (version === 2 && refcountBits !== 16) return yield* bad("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
    if (version === 2 && options.lazyRefcounts) return yield* bad("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
    if (version === 2 && options.extendedL2) return yield* bad("Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
    if (options.extendedL2 && clusterBits < 14) return yield* bad("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
    if (version === 2 && options.dataFile !== undefined) return yield* bad("Data file only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
    if (options.dataFileRaw && options.dataFile === undefined) return yield* bad("data-file-raw requires data-file")
    if (options.backingFile !== undefined && options.dataFileRaw) return yield* bad("Backing file and data-file-raw cannot be used at the same time")
    const compressionType = options.compressionType === "zstd" ? 1 : 0
    if (compressionType === 1 && version === 2) return yield* bad("Compression type selection is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
    if (options.backingFile !== undefined && options.preallocation !== undefined && options.preallocation !== "off" && !options.extendedL2) {
      return yield* bad("Backing file and preallocation can only be used at the same time if extended_l2 is on")
    }
    if (!Number.isSafeInteger(size) || size < 0) return yield* bad(`Invalid image size ${size}`)
    if (size % 512 !== 0) return yield* bad("Image size must be a multiple of 512 bytes")
    const geometry = makeGeometry(clusterBits, options.extendedL2 ?? false, refcountOrder)
    if (l1EntriesFor(size, geometry) * 8 > Limits.maxL1Bytes) return yield* bad("The image size is too large for file format 'qcow2' (try using a larger cluster size)")
    const plan: CreatePlan = {
      size,
      clusterBits,
      version,
      refcountOrder,
      lazyRefcounts: options.lazyRefcounts ?? false,
      extendedL2: options.extendedL2 ?? false,
      compressionType,
      ...(options.backingFile !== undefined ? { backingFile: options.backingFile } : {}),
      ...(options.backingFormat !== undefined ? { backingFormat: options.backingFormat } : {}),
      ...(options.dataFile !== undefined ? { dataFile: options.dataFile } : {}),
      dataFileRaw: options.dataFileRaw ?? false,
      preallocation: options.dataFileRaw ? (options.preallocation === undefined || options.preallocation === "off" ? "metadata" : options.preallocation) : (options.preallocation ?? "off")
    }
    return plan
  })
}

/**
 * Writes a qcow2 image of virtual size 0 laid out as qemu-img lays it out:
 * header in cluster 0, refcount table in cluster 1, one refcount block in
 * cluster 2 (spec "Header"; QEMU's qcow2_co_create). Like QEMU, the caller
 * then grows it to its size through the driver, which places the L1 table
 * in cluster 3, and preallocates through the driver too.
 */
export function writeEmptyImage(storage: BlockStorageShape, plan: CreatePlan): Effect.Effect<void, ImageError> {
  return asImageError(
    Effect.gen(function* () {
      const cs = 2 ** plan.clusterBits
      let incompatible = 0n
      if (plan.dataFile !== undefined) incompatible |= IncompatibleFeature.ExternalDataFile
      if (plan.compressionType !== 0) incompatible |= IncompatibleFeature.CompressionType
      if (plan.extendedL2) incompatible |= IncompatibleFeature.ExtendedL2
      const header: Header = {
        version: plan.version,
        backingFileOffset: 0,
        backingFileSize: 0,
        clusterBits: plan.clusterBits,
        size: 0,
        cryptMethod: 0,
        l1Size: 0,
        l1TableOffset: 0,
        refcountTableOffset: cs,
        refcountTableClusters: 1,
        nbSnapshots: 0,
        snapshotsOffset: 0,
        incompatibleFeatures: incompatible,
        compatibleFeatures: plan.lazyRefcounts ? CompatibleFeature.LazyRefcounts : 0n,
        autoclearFeatures: plan.dataFileRaw ? AutoclearFeature.RawExternalData : 0n,
        refcountOrder: plan.refcountOrder,
        headerLength: plan.version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH,
        compressionType: plan.compressionType,
        unknownHeaderFields: new Uint8Array(0)
      }
      const image: ImageHeader = {
        header,
        extensions: {
          ...(plan.backingFormat !== undefined ? { backingFormat: plan.backingFormat } : {}),
          ...(plan.dataFile !== undefined ? { externalDataFile: plan.dataFile } : {}),
          featureNames: featureNamesFor(plan.version, plan.clusterBits),
          unknown: []
        },
        ...(plan.backingFile !== undefined ? { backingFile: plan.backingFile } : {})
      }
      const headerBytes = yield* Effect.try({
        try: () => encodeImageHeader(image),
        catch: (e) => bad(`cannot encode the header: ${(e as Error).message}`)
      })
      const cluster0 = new Uint8Array(cs)
      cluster0.set(headerBytes)
      const reftable = new Uint8Array(cs)
      writeRefcountTableEntry(reftable, 0, 2 * cs)
      const refblock = new Uint8Array(cs)
      for (let c = 0; c < 3; c++) writeRefcount(refblock, c, plan.refcountOrder, 1)
      yield* storage.resize(0)
      yield* storage.write(0, cluster0)
      yield* storage.write(cs, reftable)
      yield* storage.write(2 * cs, refblock)
      yield* storage.flush()
    }),
    "create"
  )
}

export type CreateScope = Scope.Scope
