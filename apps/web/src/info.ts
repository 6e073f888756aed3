import { Effect } from "effect"
import { AutoclearFeature, CompatibleFeature, IncompatibleFeature } from "@qcow2/format"
import { imageInfo, mapImage, type Image, type MapEntry } from "@qcow2/image"
import { el, humanSize } from "./dom.js"

/** Feature bits in words (qcow2.txt, "Header": incompatible, compatible and autoclear features). */
const FEATURES: ReadonlyArray<readonly [string, "incompatibleFeatures" | "compatibleFeatures" | "autoclearFeatures", bigint, string]> = [
  ["dirty", "incompatibleFeatures", IncompatibleFeature.Dirty, "refcounts may be stale (lazy refcounts, not closed cleanly)"],
  ["corrupt", "incompatibleFeatures", IncompatibleFeature.Corrupt, "metadata damage was found; writes are refused"],
  ["external data file", "incompatibleFeatures", IncompatibleFeature.ExternalDataFile, "guest data lives in a separate file"],
  ["compression type", "incompatibleFeatures", IncompatibleFeature.CompressionType, "compressed clusters use the header's compression type"],
  ["extended L2", "incompatibleFeatures", IncompatibleFeature.ExtendedL2, "L2 entries have 32 subclusters"],
  ["lazy refcounts", "compatibleFeatures", CompatibleFeature.LazyRefcounts, "refcounts are updated lazily; the dirty bit guards them"],
  ["bitmaps", "autoclearFeatures", AutoclearFeature.Bitmaps, "persistent dirty bitmaps are valid"],
  ["raw external data", "autoclearFeatures", AutoclearFeature.RawExternalData, "the data file is a valid raw image by itself"]
]

const row = (name: string, value: string | number) => el("tr", {}, el("th", {}, name), el("td", { "data-field": name }, String(value)))

/** Everything `qcow2 info` shows, and the header fields behind it, as tables. */
export const renderInfo = (image: Image): Effect.Effect<HTMLElement, unknown> =>
  Effect.gen(function* () {
    const specific = yield* image.formatSpecific()
    const table = el("table", { class: "fields" })
    let features: HTMLElement | undefined
    table.append(
      row("format", image.format),
      row("virtual size", `${humanSize(image.virtualSize)} (${image.virtualSize} bytes)`),
      row("cluster size", image.clusterSize)
    )
    const parsed = image.header
    if (parsed !== undefined) {
      const h = parsed.header
      table.append(
        row("version", `${h.version} (compat ${h.version === 3 ? "1.1" : "0.10"})`),
        row("refcount bits", 2 ** h.refcountOrder),
        row("L1 entries", h.l1Size),
        row("L1 table offset", `0x${h.l1TableOffset.toString(16)}`),
        row("refcount table offset", `0x${h.refcountTableOffset.toString(16)}`),
        row("refcount table clusters", h.refcountTableClusters),
        row("snapshots", h.nbSnapshots),
        row("encryption", h.cryptMethod === 0 ? "none" : h.cryptMethod === 1 ? "AES (legacy)" : "LUKS"),
        row("compression type", h.compressionType === 1 ? "zstd" : "zlib")
      )
      features = el(
        "table",
        { class: "features", id: "features" },
        el("tr", {}, el("th", {}, "feature"), el("th", {}, "bit"), el("th", {}, "meaning")),
        ...FEATURES.map(([n, field, bit, words]) => {
          const on = (h[field] & bit) !== 0n
          return el("tr", { class: on ? "set" : "unset", "data-feature": n }, el("td", {}, n), el("td", { class: on ? "on" : "off" }, on ? "set" : "—"), el("td", {}, words))
        })
      )
    }
    const chain: Image[] = []
    for (let layer: Image | undefined = image; layer !== undefined; layer = layer.backing) chain.push(layer)
    const chainList = el("ol", { id: "chain" }, ...chain.map((layer, depth) => el("li", {}, `${depth === 0 ? "top" : `backing ${depth}`}: ${layer.location} (${layer.format})`)))
    const sections: HTMLElement[] = [el("h3", {}, "Backing chain"), chainList]
    if (features !== undefined) sections.push(el("h3", {}, "Feature bits"), features)
    const luks = specific.luks
    if (luks !== undefined) {
      sections.push(
        el("h3", {}, "Encryption"),
        el(
          "table",
          { class: "fields", id: "encryption" },
          row("LUKS cipher", `${luks.cipherName}-${luks.cipherMode}`),
          row("hash", luks.hashSpec),
          row("key slots in use", `${luks.keySlots.filter((k) => k.active).length} of ${luks.keySlots.length}`),
          row("payload offset", luks.payloadOffset * 512)
        )
      )
    }
    if (image.snapshots.length > 0) {
      sections.push(
        el("h3", {}, "Snapshots"),
        el(
          "table",
          { id: "snapshots" },
          el("tr", {}, el("th", {}, "ID"), el("th", {}, "name"), el("th", {}, "VM size"), el("th", {}, "date")),
          ...image.snapshots.map((s) =>
            el("tr", {}, el("td", {}, s.id), el("td", {}, s.name), el("td", {}, humanSize(s.vmStateSize)), el("td", {}, new Date(s.dateSeconds * 1000).toISOString()))
          )
        )
      )
    }
    if (specific.bitmaps !== undefined && specific.bitmaps.length > 0) {
      sections.push(
        el("h3", {}, "Bitmaps"),
        el("ul", { id: "bitmaps" }, ...specific.bitmaps.map((b) => el("li", {}, `${b.name}: granularity ${2 ** b.granularityBits}, flags ${b.flags}`)))
      )
    }
    return el("div", { class: "overview" }, el("div", {}, el("h3", {}, "Header"), table), el("div", {}, ...sections))
  })

/** JSON text with 4-space indents; an icount too large for a number prints as its digits. */
const toJson = (value: unknown): string =>
  JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `\u0000${v}` : v), 4).replace(/"\\u0000(\d+)"/g, "$1")

/**
 * `qcow2 info --output=json` of the open image shown as `name` (the same
 * data as qemu-img's ImageInfo; keys in QAPI struct order). The browser
 * cannot know the file's allocated size, so "actual-size" is left out.
 */
export const infoJson = (image: Image, name: string): Effect.Effect<string, unknown> => Effect.map(imageInfo(image, name, undefined), toJson)

/** One map record exactly as `qemu-img map --output=json` prints it. */
const mapRecord = (e: MapEntry): string =>
  `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
  (e.offset !== undefined ? `, "offset": ${e.offset}` : "") +
  "}"

/** `qcow2 map --output=json` of the open image, in qemu-img's layout. */
export const mapJson = (image: Image, name: string): Effect.Effect<string, unknown> =>
  Effect.map(mapImage(image, name), (entries) => `[${entries.map(mapRecord).join(",\n")}]\n`)
