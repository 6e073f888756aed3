import * as fs from "node:fs"
import { Effect } from "effect"
import type { SnapshotEntry } from "@qcow2/format"
import { NULL_CO_NAME, chainLayers, imageInfo as buildImageInfo, openImage, qcow2SpecificInfo, type ChainLayer, type Image, type ImageError, type ImageFormat } from "@qcow2/image"
import { fileNameOf, imageOptions, open, resolveNamed, type ImageEnv, type CliFormat } from "../env.js"
import { jsonNameOf, parseJsonName, parseOptionString, plainFileOf } from "../qemu-filename.js"
import { nbdInfoOf } from "../nbd-node.js"
import { fail, openFailure, type CliFailure } from "../errors.js"
import { isUrl } from "../names.js"
import { print } from "../output.js"
import { padLeft, padRight } from "../text/cformat.js"
import { QDict, dumpHuman, toQemuJson, type QValue } from "../text/qjson.js"
import { sizeToStr } from "../text/sizes.js"

export type OutputFormat = "human" | "json"

export interface InfoOptions {
  readonly file: string
  readonly format?: CliFormat
  readonly output: OutputFormat
  readonly backingChain: boolean
  readonly passphrase?: Uint8Array
  /** `-U`: share the image with every other user (read-only opens; see OpenOptions.forceShare). */
  readonly forceShare?: boolean
}

/** One image of `qemu-img info`: the name QEMU shows and the opened image. */
export type Layer = ChainLayer

export { chainLayers }

/** What a command-line image name opens (undefined when it is a plain path or bad). */
const named = (name: string) => {
  const resolved = resolveNamed(name, {})
  return "error" in resolved ? undefined : resolved.spec
}

/** Allocated bytes of a local file (st_blocks * 512), as qemu-img's "actual-size". */
const allocatedBytes = (path: string): number | undefined => {
  if (isUrl(path)) return undefined
  // QEMU's null-co device occupies nothing.
  if (path === NULL_CO_NAME) return 0
  try {
    return fs.statSync(path).blocks * 512
  } catch {
    return undefined
  }
}

/** The info data (plain objects, fields in QAPI struct order) as QDicts, which print in QEMU's key order. */
const toQValue = (value: unknown): QValue => {
  if (Array.isArray(value)) return value.map(toQValue)
  if (typeof value === "object" && value !== null) return QDict.of(Object.entries(value).map(([k, v]) => [k, toQValue(v)] as const))
  return value as QValue
}

/** The qcow2 format-specific data of an image, bitmaps included (qemu-io "info" prints it too). */
export const qcow2SpecificFor = (image: Image): Effect.Effect<QDict | undefined, ImageError> =>
  Effect.map(qcow2SpecificInfo(image), (data) => (data !== undefined ? (toQValue(data) as QDict) : undefined))

/** QAPI ImageInfo for one image, fields inserted in struct order. */
export const imageInfo = (layer: Layer, actualSize = allocatedBytes(layer.image.location)): Effect.Effect<QDict, ImageError> =>
  Effect.map(buildImageInfo(layer.image, layer.name, actualSize), (info) => toQValue(info) as QDict)

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
  // Listed where the info has them (not for an image with an external data file, as QEMU's qcow2_snapshot_list refuses).
  if (snapshots.length > 0 && get("snapshots") !== undefined) {
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

/**
 * qemu-img info (collect_image_info_list): each image of the chain is
 * opened alone (without its backing file), the next one by the name the
 * one before shows as its full backing file name, so a chain that loops
 * or breaks fails at that image, with QEMU's messages.
 */
export const runInfo = (options: InfoOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const layers: Layer[] = []
      const infos: QDict[] = []
      const seen = new Set<string>()
      let next: string | undefined = options.file
      let format = options.format
      while (next !== undefined) {
        const name: string = next
        if (seen.has(name)) return yield* Effect.fail(fail(`Backing file '${name}' creates an infinite loop.`))
        seen.add(name)
        const openOptions = {
          readOnly: true,
          format,
          openBacking: false,
          passphrase: options.passphrase,
          // qemu-img info opens with BDRV_O_NO_IO: an encrypted image needs no key.
          noIo: true,
          forceShare: options.forceShare === true
        }
        // Only the top image is named by options (--image-opts, json:); backing names are file names.
        const top = layers.length === 0
        // A backing file's format is an image format (a null-co device has no backing file).
        const image = top
          ? yield* open(name, openOptions)
          : yield* Effect.mapError(openImage(name, { ...openOptions, format: format === "null-co" ? undefined : format }), (e) => openFailure(name, e))
        // A name that only names a file shows as that file; backing names resolve against the file.
        const plain = top ? plainFileOf(name, imageOptions.enabled) : undefined
        const shown = plain ?? (top && imageOptions.enabled ? jsonNameOf(name) : name)
        const relativeTo = top ? fileNameOf(name) : name
        const spec = top ? named(name) : undefined
        const quorum = spec?.quorum
        // A quorum node occupies what its children occupy.
        const quorumSize = quorum?.children.reduce<number | undefined>((sum, child) => {
          const bytes = allocatedBytes(child.file)
          return sum === undefined || bytes === undefined ? undefined : sum + bytes
        }, 0)
        const info: QDict = yield* Effect.mapError(imageInfo({ name: relativeTo, image }, quorum !== undefined ? quorumSize : undefined), (e) => openFailure(name, e))
        info.set("filename", shown)
        // A backing file named relative to a quorum node has no directory to resolve against (QEMU: "cannot determine actual path").
        if (quorum !== undefined && info.get("full-backing-filename") !== info.get("backing-filename")) info.delete("full-backing-filename")
        if (spec?.compressFilter === true) {
          // The compress filter node: its own name, the sizes of the image below, no backing file or format-specific data of its own.
          for (const key of ["backing-filename", "full-backing-filename", "backing-filename-format", "format-specific", "snapshots", "encrypted"]) info.delete(key)
          info.set("format", "compress")
        }
        // A protocol node at the root (json:{"driver":"file",…}) shows its driver as the format.
        if (spec?.protocol !== undefined) info.set("format", spec.protocol)
        if (spec?.quorumTop === true) {
          // The quorum node at the root: QEMU's name for it, no dirty flag (its driver answers no get_info).
          for (const key of ["dirty-flag"]) info.delete(key)
          info.set("filename", spec.file)
          info.set("format", "quorum")
        }
        const nbd = top && image.format === "raw" ? nbdInfoOf(shown, nameOptions(name)) : undefined
        if (nbd !== undefined) {
          // A raw export over NBD has no dirty flag (QEMU's nbd driver answers no get_info); the nbd node at the root shows as format "nbd".
          const fields = QDict.of(info.entries.filter(([key]) => key !== "dirty-flag"))
          info.entries.splice(0, info.entries.length, ...fields.entries)
          info.set("format", nbd.rootFormat)
        }
        layers.push({ name: shown, image })
        infos.push(info)
        if (!options.backingChain) break
        const full: QValue | undefined = info.get("full-backing-filename")
        const backingFormat = info.get("backing-filename-format")
        if (full === undefined && info.get("backing-filename") !== undefined) {
          return yield* Effect.fail(fail(`Could not determine absolute backing filename, but backing filename '${String(info.get("backing-filename"))}' present`))
        }
        next = typeof full === "string" ? full : undefined
        format = typeof backingFormat === "string" && isFormat(backingFormat) ? backingFormat : undefined
      }
      if (options.output === "json") {
        print(toQemuJson(options.backingChain ? infos : infos[0]!) + "\n")
      } else {
        print(infos.map((info, i) => humanInfo(info, layers[i]!.image.snapshots)).join("\n"))
      }
      return 0
    })
  )

/** The block options a top image name carries (--image-opts or json:), if any. */
const nameOptions = (name: string) => {
  if (imageOptions.enabled) return parseOptionString(name)
  const parsed = name.startsWith("json:") ? parseJsonName(name) : undefined
  return parsed?.ok === true ? parsed.options : undefined
}

const isFormat = (name: string): name is ImageFormat => name === "qcow2" || name === "raw" || name === "luks"
