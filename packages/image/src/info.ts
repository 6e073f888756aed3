/**
 * The data of `qemu-img info --output=json` (QAPI ImageInfo) as plain
 * objects, built from an open image. Fields are inserted in QAPI struct
 * order and absent ones are left out, so a printer that needs QEMU's key
 * order (the CLI) can rebuild it from the insertion order.
 */
import { Effect } from "effect"
import { AutoclearFeature, BitmapFlag, CompatibleFeature, CryptMethod, IncompatibleFeature, type SnapshotEntry } from "@qcow2/format"
import type { LuksHeader } from "@qcow2/crypto"
import type { FormatSpecific, Image } from "./api.js"
import type { ImageError } from "./errors.js"
import { NULL_CO_NAME } from "./null.js"

/** QEMU's path_has_protocol: a ':' before any '/'. */
const hasProtocol = (name: string): boolean => /^[^:/]*:/.test(name)

/**
 * The name QEMU shows for backing file `name` referenced from image `base`
 * (block.c path_combine): combined textually with the directory of `base`,
 * "sub/t.qcow2" + "../b.qcow2" giving "sub/../b.qcow2".
 */
export const pathCombine = (base: string, name: string): string => {
  if (name === "" || name.startsWith("/") || hasProtocol(name)) return name
  const protocolEnd = hasProtocol(base) ? base.indexOf(":") + 1 : 0
  const slash = base.lastIndexOf("/")
  const cut = Math.max(protocolEnd, slash + 1)
  return base.slice(0, cut) + name
}

/** A persistent bitmap as ImageInfoSpecificQCow2.bitmaps lists it. */
export interface BitmapInfo {
  readonly name: string
  readonly granularity: number
  readonly flags: ReadonlyArray<"in-use" | "auto">
}

/** One LUKS key slot (QCryptoBlockInfoLUKSSlot). */
export interface LuksSlotInfo {
  readonly active: boolean
  readonly iters?: number
  readonly stripes?: number
  readonly "key-offset": number
}

/** QCryptoBlockInfoLUKS; `format` is set inside qcow2's "encrypt" member only. */
export interface LuksInfo {
  readonly format?: "luks"
  readonly "cipher-alg": string
  readonly "cipher-mode": string
  readonly "ivgen-alg": string
  readonly "ivgen-hash-alg"?: string
  readonly "hash-alg": string
  readonly "payload-offset": number
  readonly "master-key-iters": number
  readonly uuid: string
  readonly slots: ReadonlyArray<LuksSlotInfo>
}

/** ImageInfoSpecificQCow2 with the fields QEMU 7.2 sets for each version. */
export interface Qcow2SpecificInfo {
  readonly compat: "1.1" | "0.10"
  readonly "data-file"?: string
  readonly "data-file-raw"?: boolean
  readonly "extended-l2"?: boolean
  readonly "lazy-refcounts"?: boolean
  readonly corrupt?: boolean
  readonly "refcount-bits": number
  readonly encrypt?: LuksInfo | { readonly format: "aes" | "luks" }
  readonly bitmaps?: ReadonlyArray<BitmapInfo>
  readonly "compression-type": "zlib" | "zstd"
}

/** SnapshotInfo; `icount` is a bigint only when it does not fit a JS number exactly. */
export interface SnapshotInfo {
  readonly id: string
  readonly name: string
  readonly "vm-state-size": number
  readonly "date-sec": number
  readonly "date-nsec": number
  readonly "vm-clock-sec": number
  readonly "vm-clock-nsec": number
  readonly icount?: number | bigint
}

/** QAPI ImageInfo, as `qemu-img info --output=json` prints it for one image. */
export interface ImageInfo {
  readonly filename: string
  readonly format: Image["format"]
  /** Absent where QEMU's bdrv_get_info fails (the null-co device). */
  readonly "dirty-flag"?: boolean
  readonly "actual-size"?: number
  readonly "virtual-size": number
  readonly "cluster-size"?: number
  readonly encrypted?: true
  readonly "backing-filename"?: string
  readonly "full-backing-filename"?: string
  readonly "backing-filename-format"?: string
  readonly snapshots?: ReadonlyArray<SnapshotInfo>
  readonly "format-specific"?:
    | { readonly type: "qcow2"; readonly data: Qcow2SpecificInfo }
    | { readonly type: "luks"; readonly data: LuksInfo }
}

/** Copies `fields` without its undefined members (QAPI has_xxx = false), keeping the order. */
const present = <T>(fields: { [K in keyof T]: T[K] | undefined }): T => {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(fields)) if (value !== undefined) out[key] = value
  return out as T
}

const isSet = (bits: bigint, flag: bigint): boolean => (bits & flag) !== 0n

/** Persistent bitmaps (the image lists them only while they are consistent). */
const bitmapsInfo = (entries: FormatSpecific["bitmaps"]): BitmapInfo[] | undefined =>
  entries?.map((e) => {
    const flags: Array<"in-use" | "auto"> = []
    if ((e.flags & BitmapFlag.InUse) !== 0) flags.push("in-use")
    if ((e.flags & BitmapFlag.Auto) !== 0) flags.push("auto")
    return { name: e.name, granularity: 2 ** e.granularityBits, flags }
  })

/** QEMU's name of a LUKS cipher: algorithm and key size ("aes-256"). */
const cipherAlg = (name: string, mode: string, keyBytes: number): string => {
  const bits = (keyBytes * 8) / (mode.startsWith("xts") ? 2 : 1)
  return name === "cast5" ? "cast5-128" : `${name}-${bits}`
}

/** QCryptoBlockInfoLUKS of a LUKS header. */
export const luksInfo = (h: LuksHeader, inQcow2: boolean): LuksInfo => {
  const [modeName = "", ivgen = ""] = h.cipherMode.split("-")
  const [ivgenAlg = "", ivgenHash] = ivgen.split(":")
  return present<LuksInfo>({
    // Inside qcow2 it is the "encrypt" member (a union tagged by format); a luks image's own data has no tag.
    format: inQcow2 ? "luks" : undefined,
    "cipher-alg": cipherAlg(h.cipherName, modeName, h.keyBytes),
    "cipher-mode": modeName,
    "ivgen-alg": ivgenAlg,
    "ivgen-hash-alg": ivgenAlg === "essiv" ? ivgenHash : undefined,
    "hash-alg": h.hashSpec,
    "payload-offset": h.payloadOffset * 512,
    "master-key-iters": h.mkDigestIterations,
    uuid: h.uuid,
    slots: h.keySlots.map((k) =>
      present<LuksSlotInfo>({
        active: k.active,
        iters: k.active ? k.iterations : undefined,
        stripes: k.active ? k.stripes : undefined,
        "key-offset": k.keyMaterialOffset * 512
      })
    )
  })
}

const qcow2Specific = (image: Image, details: FormatSpecific): Qcow2SpecificInfo | undefined => {
  const parsed = image.header
  if (parsed === undefined) return undefined
  const h = parsed.header
  const v3 = h.version === 3
  const hasDataFile = isSet(h.incompatibleFeatures, IncompatibleFeature.ExternalDataFile)
  const encrypt =
    h.cryptMethod === CryptMethod.Aes
      ? { format: "aes" as const }
      : h.cryptMethod === CryptMethod.Luks
        ? details.luks !== undefined
          ? luksInfo(details.luks, true)
          : { format: "luks" as const }
        : undefined
  return present<Qcow2SpecificInfo>({
    compat: v3 ? "1.1" : "0.10",
    "data-file": v3 ? parsed.extensions.externalDataFile : undefined,
    "data-file-raw": v3 && hasDataFile ? isSet(h.autoclearFeatures, AutoclearFeature.RawExternalData) : undefined,
    "extended-l2": v3 ? isSet(h.incompatibleFeatures, IncompatibleFeature.ExtendedL2) : undefined,
    "lazy-refcounts": v3 ? isSet(h.compatibleFeatures, CompatibleFeature.LazyRefcounts) : undefined,
    corrupt: v3 ? isSet(h.incompatibleFeatures, IncompatibleFeature.Corrupt) : undefined,
    "refcount-bits": 2 ** h.refcountOrder,
    encrypt,
    bitmaps: v3 ? bitmapsInfo(details.bitmaps) : undefined,
    "compression-type": h.compressionType === 1 ? "zstd" : "zlib"
  })
}

/** The qcow2 format-specific data of an image, bitmaps included (undefined for other formats). */
export const qcow2SpecificInfo = (image: Image): Effect.Effect<Qcow2SpecificInfo | undefined, ImageError> =>
  Effect.map(image.formatSpecific(), (details) => qcow2Specific(image, details))

const snapshotInfo = (s: SnapshotEntry): SnapshotInfo => {
  const clock = s.vmClockNanoseconds
  const icount = s.icount !== undefined && s.icount !== -1n ? s.icount : undefined
  return present<SnapshotInfo>({
    id: s.id,
    name: s.name,
    "vm-state-size": s.vmStateSize,
    "date-sec": s.dateSeconds,
    "date-nsec": s.dateNanoseconds,
    "vm-clock-sec": Number(clock / 1_000_000_000n),
    "vm-clock-nsec": Number(clock % 1_000_000_000n),
    icount: icount !== undefined && icount <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(icount) : icount
  })
}

/**
 * ImageInfo of one open image shown under `name` (qemu-img's name for it).
 * `actualSize` is the file's allocated bytes (st_blocks * 512), which only
 * the caller's platform knows; qemu-img counts the image file alone, not
 * an external data file.
 */
export const imageInfo = (image: Image, name: string, actualSize: number | undefined): Effect.Effect<ImageInfo, ImageError> =>
  Effect.gen(function* () {
    const parsed = image.header
    const backing = image.backingFileName !== undefined && image.backingFileName !== "" ? image.backingFileName : undefined
    const dirty = parsed !== undefined && isSet(parsed.header.incompatibleFeatures, IncompatibleFeature.Dirty)
    const encrypted = image.format === "luks" || (parsed !== undefined && parsed.header.cryptMethod !== CryptMethod.None)
    const hasExternalDataFile = parsed !== undefined && isSet(parsed.header.incompatibleFeatures, IncompatibleFeature.ExternalDataFile)
    let specific: ImageInfo["format-specific"]
    if (image.format === "qcow2") {
      const data = yield* qcow2SpecificInfo(image)
      if (data !== undefined) specific = { type: "qcow2", data }
    } else if (image.format === "luks") {
      const luks = (yield* image.formatSpecific()).luks
      if (luks !== undefined) specific = { type: "luks", data: luksInfo(luks, false) }
    }
    return present<ImageInfo>({
      filename: name,
      format: image.format,
      "dirty-flag": image.location === NULL_CO_NAME ? undefined : dirty,
      "actual-size": actualSize,
      "virtual-size": image.virtualSize,
      "cluster-size": image.format === "qcow2" ? image.clusterSize : undefined,
      encrypted: encrypted ? true : undefined,
      "backing-filename": backing,
      "full-backing-filename": backing !== undefined ? pathCombine(name, backing) : undefined,
      "backing-filename-format": backing !== undefined ? parsed?.extensions.backingFormat : undefined,
      // QEMU's qcow2_snapshot_list refuses (ENOTSUP) for an image with an external data file: no list then.
      snapshots: image.snapshots.length > 0 && !hasExternalDataFile ? image.snapshots.map(snapshotInfo) : undefined,
      "format-specific": specific
    })
  })
