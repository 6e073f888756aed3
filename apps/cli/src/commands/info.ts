import * as fs from "node:fs"
import { Effect } from "effect"
import { AutoclearFeature, BitmapFlag, CompatibleFeature, CryptMethod, IncompatibleFeature, type SnapshotEntry } from "@qcow2/format"
import type { FormatSpecific, Image, ImageError, ImageFormat } from "@qcow2/image"
import type { LuksHeader } from "@qcow2/crypto"
import { open, type ImageEnv } from "../env.js"
import { openFailure, type CliFailure } from "../errors.js"
import { isUrl, pathCombine } from "../names.js"
import { print } from "../output.js"
import { padLeft, padRight } from "../text/cformat.js"
import { QDict, dumpHuman, toQemuJson, type QValue } from "../text/qjson.js"
import { sizeToStr } from "../text/sizes.js"

export type OutputFormat = "human" | "json"

export interface InfoOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly output: OutputFormat
  readonly backingChain: boolean
  readonly passphrase?: Uint8Array
}

/** One image of `qemu-img info`: the name QEMU shows and the opened image. */
export interface Layer {
  readonly name: string
  readonly image: Image
}

/** The images of a backing chain, top first, named as QEMU names them. */
export const chainLayers = (top: Image, name: string): Layer[] => {
  const layers: Layer[] = [{ name, image: top }]
  let current = top
  let currentName = name
  while (current.backing !== undefined) {
    currentName = pathCombine(currentName, current.backingFileName ?? current.backing.location)
    layers.push({ name: currentName, image: current.backing })
    current = current.backing
  }
  return layers
}

/** Allocated bytes of a local file (st_blocks * 512), as qemu-img's "actual-size". */
const allocatedBytes = (path: string): number | undefined => {
  if (isUrl(path)) return undefined
  try {
    return fs.statSync(path).blocks * 512
  } catch {
    return undefined
  }
}

const isSet = (bits: bigint, flag: bigint): boolean => (bits & flag) !== 0n

/** Persistent bitmaps as ImageInfoSpecificQCow2.bitmaps (the image lists them only while they are consistent). */
const bitmapsInfo = (entries: FormatSpecific["bitmaps"]): QValue[] | undefined =>
  entries?.map((e) => {
    const flags: string[] = []
    if ((e.flags & BitmapFlag.InUse) !== 0) flags.push("in-use")
    if ((e.flags & BitmapFlag.Auto) !== 0) flags.push("auto")
    return QDict.of([
      ["name", e.name],
      ["granularity", 2 ** e.granularityBits],
      ["flags", flags]
    ])
  })

/** QEMU's name of a LUKS cipher: algorithm and key size ("aes-256"). */
const cipherAlg = (name: string, mode: string, keyBytes: number): string => {
  const bits = (keyBytes * 8) / (mode.startsWith("xts") ? 2 : 1)
  return name === "cast5" ? "cast5-128" : `${name}-${bits}`
}

/** QCryptoBlockInfoLUKS of the image's LUKS header. */
const luksInfo = (h: LuksHeader | undefined, inQcow2 = true): QDict | undefined => {
  if (h === undefined) return undefined
  const [modeName = "", ivgen = ""] = h.cipherMode.split("-")
  const [ivgenAlg = "", ivgenHash] = ivgen.split(":")
  return QDict.of([
    // Inside qcow2 it is the "encrypt" member (a union tagged by format); a luks image's own data has no tag.
    ["format", inQcow2 ? "luks" : undefined],
    ["cipher-alg", cipherAlg(h.cipherName, modeName, h.keyBytes)],
    ["cipher-mode", modeName],
    ["ivgen-alg", ivgenAlg],
    ["ivgen-hash-alg", ivgenAlg === "essiv" ? ivgenHash : undefined],
    ["hash-alg", h.hashSpec],
    ["payload-offset", h.payloadOffset * 512],
    ["master-key-iters", h.mkDigestIterations],
    ["uuid", h.uuid],
    [
      "slots",
      h.keySlots.map((k) =>
        QDict.of([
          ["active", k.active],
          ["iters", k.active ? k.iterations : undefined],
          ["stripes", k.active ? k.stripes : undefined],
          ["key-offset", k.keyMaterialOffset * 512]
        ])
      )
    ]
  ])
}

/** ImageInfoSpecificQCow2, with the fields QEMU 7.2 sets for each version. */
const qcow2Specific = (image: Image, bitmaps: QValue[] | undefined, luks: QDict | undefined): QDict | undefined => {
  const parsed = image.header
  if (parsed === undefined) return undefined
  const h = parsed.header
  const v3 = h.version === 3
  const hasDataFile = isSet(h.incompatibleFeatures, IncompatibleFeature.ExternalDataFile)
  const encrypt =
    h.cryptMethod === CryptMethod.Aes
      ? QDict.of([["format", "aes"]])
      : h.cryptMethod === CryptMethod.Luks
        ? (luks ?? QDict.of([["format", "luks"]]))
        : undefined
  return QDict.of([
    ["compat", v3 ? "1.1" : "0.10"],
    ["data-file", v3 ? parsed.extensions.externalDataFile : undefined],
    ["data-file-raw", v3 && hasDataFile ? isSet(h.autoclearFeatures, AutoclearFeature.RawExternalData) : undefined],
    ["extended-l2", v3 ? isSet(h.incompatibleFeatures, IncompatibleFeature.ExtendedL2) : undefined],
    ["lazy-refcounts", v3 ? isSet(h.compatibleFeatures, CompatibleFeature.LazyRefcounts) : undefined],
    ["corrupt", v3 ? isSet(h.incompatibleFeatures, IncompatibleFeature.Corrupt) : undefined],
    ["refcount-bits", 2 ** h.refcountOrder],
    ["encrypt", encrypt],
    ["bitmaps", v3 ? bitmaps : undefined],
    ["compression-type", h.compressionType === 1 ? "zstd" : "zlib"]
  ])
}

/** The qcow2 format-specific data of an image, bitmaps included (qemu-io "info" prints it too). */
export const qcow2SpecificFor = (image: Image): Effect.Effect<QDict | undefined, ImageError> =>
  Effect.map(image.formatSpecific(), (details) => qcow2Specific(image, bitmapsInfo(details.bitmaps), luksInfo(details.luks)))

const snapshotInfo = (s: SnapshotEntry): QDict => {
  const clock = s.vmClockNanoseconds
  return QDict.of([
    ["id", s.id],
    ["name", s.name],
    ["vm-state-size", s.vmStateSize],
    ["date-sec", s.dateSeconds],
    ["date-nsec", s.dateNanoseconds],
    ["vm-clock-sec", clock / 1_000_000_000n],
    ["vm-clock-nsec", clock % 1_000_000_000n],
    ["icount", s.icount !== undefined && s.icount !== -1n ? s.icount : undefined]
  ])
}

/** QAPI ImageInfo for one image, fields inserted in struct order. */
export const imageInfo = (layer: Layer): Effect.Effect<QDict, ImageError> =>
  Effect.gen(function* () {
    const { image, name } = layer
    const parsed = image.header
    // qemu-img 7.2 counts only the image file itself, not an external data file.
    const actualSize = allocatedBytes(image.location)
    const backing = image.backingFileName !== undefined && image.backingFileName !== "" ? image.backingFileName : undefined
    const dirty = parsed !== undefined && isSet(parsed.header.incompatibleFeatures, IncompatibleFeature.Dirty)
    const encrypted = image.format === "luks" || (parsed !== undefined && parsed.header.cryptMethod !== CryptMethod.None)
    const specific =
      image.format === "qcow2"
        ? yield* qcow2SpecificFor(image)
        : image.format === "luks"
          ? luksInfo((yield* image.formatSpecific()).luks, false)
          : undefined
    return QDict.of([
      ["filename", name],
      ["format", image.format],
      ["dirty-flag", dirty],
      ["actual-size", actualSize],
      ["virtual-size", image.virtualSize],
      ["cluster-size", image.format === "qcow2" ? image.clusterSize : undefined],
      ["encrypted", encrypted ? true : undefined],
      ["backing-filename", backing],
      ["full-backing-filename", backing !== undefined ? pathCombine(name, backing) : undefined],
      ["backing-filename-format", backing !== undefined ? parsed?.extensions.backingFormat : undefined],
      ["snapshots", image.snapshots.length > 0 ? image.snapshots.map(snapshotInfo) : undefined],
      ["format-specific", specific !== undefined ? QDict.of([["type", image.format], ["data", specific]]) : undefined]
    ])
  })

const two = (n: number): string => (n < 10 ? `0${n}` : String(n))

/** Local date as strftime "%Y-%m-%d %H:%M:%S". */
const localDate = (seconds: number): string => {
  const d = new Date(seconds * 1000)
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
}

/** The snapshot table header of `qemu-img info` / `snapshot -l`. */
export const snapshotHeader = (): string =>
  padRight("ID", 10) + padRight("TAG", 17) + padLeft("VM SIZE", 8) + padLeft("DATE", 20) + padLeft("VM CLOCK", 13) + padLeft("ICOUNT", 11)

/** One snapshot row (block/qapi.c bdrv_snapshot_dump). */
export const snapshotRow = (s: SnapshotEntry): string => {
  const nanos = s.vmClockNanoseconds
  const secs = Number(nanos / 1_000_000_000n)
  const millis = Number((nanos / 1_000_000n) % 1000n)
  const clock = `${two(Math.floor(secs / 3600))}:${two(Math.floor(secs / 60) % 60)}:${two(secs % 60)}.${String(millis).padStart(3, "0")}`
  const icount = s.icount !== undefined && s.icount !== -1n ? String(s.icount) : ""
  return (
    padRight(s.id, 9) + " " + padRight(s.name, 16) + " " + padLeft(sizeToStr(s.vmStateSize), 8) +
    padLeft(localDate(s.dateSeconds), 20) + padLeft(clock, 13) + padLeft(icount, 11)
  )
}

/** `qemu-img info` human output for one image (block/qapi.c bdrv_image_info_dump). */
export const humanInfo = (info: QDict, snapshots: ReadonlyArray<SnapshotEntry>): string => {
  const get = (k: string) => info.get(k)
  const lines: string[] = []
  const virtualSize = get("virtual-size") as number
  const actual = get("actual-size") as number | undefined
  lines.push(`image: ${get("filename")}`)
  lines.push(`file format: ${get("format")}`)
  lines.push(`virtual size: ${sizeToStr(virtualSize)} (${virtualSize} bytes)`)
  lines.push(`disk size: ${actual === undefined ? "unavailable" : sizeToStr(actual)}`)
  if (get("encrypted") === true) lines.push("encrypted: yes")
  if (get("cluster-size") !== undefined) lines.push(`cluster_size: ${get("cluster-size")}`)
  if (get("dirty-flag") === true) lines.push("cleanly shut down: no")
  const backing = get("backing-filename") as string | undefined
  if (backing !== undefined) {
    const full = get("full-backing-filename") as string | undefined
    if (full === undefined) lines.push(`backing file: ${backing} (cannot determine actual path)`)
    else if (full !== backing) lines.push(`backing file: ${backing} (actual path: ${full})`)
    else lines.push(`backing file: ${backing}`)
    const fmt = get("backing-filename-format")
    if (fmt !== undefined) lines.push(`backing file format: ${fmt}`)
  }
  if (snapshots.length > 0) {
    lines.push("Snapshot list:")
    lines.push(snapshotHeader())
    for (const s of snapshots) lines.push(snapshotRow(s))
  }
  let text = lines.join("\n") + "\n"
  const specific = get("format-specific")
  if (specific instanceof QDict) {
    const data = specific.get("data")
    if (data !== undefined) text += "Format specific information:\n" + dumpHuman(data, 1)
  }
  return text
}

export const runInfo = (options: InfoOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const top = yield* open(options.file, {
        readOnly: true,
        format: options.format,
        openBacking: options.backingChain,
        passphrase: options.passphrase,
        // qemu-img info opens with BDRV_O_NO_IO: an encrypted image needs no key.
        noIo: true
      })
      const layers = options.backingChain ? chainLayers(top, options.file) : [{ name: options.file, image: top }]
      const infos: QDict[] = []
      for (const layer of layers) infos.push(yield* Effect.mapError(imageInfo(layer), (e) => openFailure(layer.name, e)))
      if (options.output === "json") {
        print(toQemuJson(options.backingChain ? infos : infos[0]!) + "\n")
      } else {
        print(infos.map((info, i) => humanInfo(info, layers[i]!.image.snapshots)).join("\n"))
      }
      return 0
    })
  )
