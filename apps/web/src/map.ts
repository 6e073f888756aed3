import { Effect } from "effect"
import type { Image } from "@qcow2/image"

/** What one guest cluster is, as the map colours it. */
export type Category = "data" | "compressed" | "zero" | "unallocated" | "backing"

export const COLOURS: Record<Category, string> = {
  data: "#2f6fd6",
  compressed: "#9b4dca",
  zero: "#cfd8dc",
  unallocated: "#eef1f5",
  backing: "#3aa675"
}

/** The guest clusters of [start, end) by category, with host offsets for the layout view. */
export interface ClusterMap {
  readonly start: number
  readonly clusterSize: number
  readonly categories: Category[]
  /** Depth of the layer that defines each cluster (0 = top) for "backing" cells. */
  readonly depths: number[]
  /** Host offset of each top-layer data cluster, or -1. */
  readonly hosts: number[]
}

/** Most clusters scanned for one view; zoom in to see more detail. */
export const MAX_CELLS = 65536

/** Block status of [start, start + count clusters), one category per cluster. */
export const scanClusters = (image: Image, start: number, count: number): Effect.Effect<ClusterMap, unknown> =>
  Effect.gen(function* () {
    const clusterSize = image.clusterSize
    const end = Math.min(image.virtualSize, start + count * clusterSize)
    const categories: Category[] = []
    const depths: number[] = []
    const hosts: number[] = []
    for (let pos = start; pos < end; ) {
      const s = yield* image.blockStatus(pos, end - pos)
      const length = Math.max(s.length, 1)
      const category: Category = !s.present
        ? "unallocated"
        : s.depth > 0
          ? "backing"
          : s.compressed
            ? "compressed"
            : s.zero && !s.data
              ? "zero"
              : "data"
      for (let at = pos; at < pos + length; at += clusterSize) {
        const index = Math.floor((at - start) / clusterSize)
        if (index >= categories.length) {
          categories.push(category)
          depths.push(s.depth)
          hosts.push(category === "data" && s.hostOffset !== undefined ? s.hostOffset + (at - pos) : -1)
        }
      }
      pos += length
    }
    return { start, clusterSize, categories, depths, hosts }
  })

/** Counts of each category (shown in the legend, and read by the tests). */
export const countCategories = (map: ClusterMap): Record<Category, number> => {
  const counts: Record<Category, number> = { data: 0, compressed: 0, zero: 0, unallocated: 0, backing: 0 }
  for (const c of map.categories) counts[c]++
  return counts
}

/** Guest clusters drawn as a grid of cells, `cell` pixels each. */
export const drawGuestMap = (canvas: HTMLCanvasElement, map: ClusterMap, cell: number): void => {
  const columns = Math.max(1, Math.floor(canvas.width / cell))
  canvas.height = Math.max(cell, Math.ceil(map.categories.length / columns) * cell)
  const g = canvas.getContext("2d")!
  g.fillStyle = "#ffffff"
  g.fillRect(0, 0, canvas.width, canvas.height)
  map.categories.forEach((c, i) => {
    g.fillStyle = c === "backing" ? shade(COLOURS.backing, map.depths[i]!) : COLOURS[c]
    g.fillRect((i % columns) * cell, Math.floor(i / columns) * cell, Math.max(1, cell - 1), Math.max(1, cell - 1))
  })
}

/** Deeper backing layers are drawn lighter. */
const shade = (hex: string, depth: number): string => {
  const f = Math.min(0.7, (depth - 1) * 0.2)
  const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)).map((v) => Math.round(v + (255 - v) * f))
  return `rgb(${c.join(",")})`
}

/** A metadata structure the image header locates (qcow2.txt "Header"): where it lies in the host file. */
export interface HostRegion {
  readonly kind: "header" | "L1 table" | "refcount table"
  readonly offset: number
  readonly length: number
}

/** Colours of the host-file view: the header's structures, data, and the rest (L2 tables, refcount blocks, free space). */
export const HOST_COLOURS: Record<HostRegion["kind"] | "data" | "other", string> = {
  header: "#37474f",
  "L1 table": "#e8833a",
  "refcount table": "#d94f70",
  data: COLOURS.data,
  other: "#f4d58d"
}

/** The structures the header of `image` places (none for raw images). */
export const headerRegions = (image: Image): HostRegion[] => {
  const h = image.header?.header
  if (h === undefined) return []
  return [
    { kind: "header", offset: 0, length: image.clusterSize },
    { kind: "L1 table", offset: h.l1TableOffset, length: h.l1Size * 8 },
    { kind: "refcount table", offset: h.refcountTableOffset, length: h.refcountTableClusters * image.clusterSize }
  ]
}

/**
 * The host file beside it: where the header, L1 table and refcount table
 * lie, which host clusters hold this view's guest data, and how fragmented
 * the data is (guest-consecutive clusters whose host clusters are not
 * consecutive). The rest of the file (L2 tables, refcount blocks, other
 * data, free space) is drawn as "other".
 */
export const drawHostLayout = (
  canvas: HTMLCanvasElement,
  map: ClusterMap,
  regions: ReadonlyArray<HostRegion>,
  fileSize: number
): { dataClusters: number; fragments: number } => {
  const g = canvas.getContext("2d")!
  const clusters = Math.max(1, Math.ceil(fileSize / map.clusterSize))
  // A square grid as wide as the canvas.
  const columns = Math.max(1, Math.ceil(Math.sqrt(clusters)))
  const cell = Math.max(1, Math.floor(canvas.width / columns))
  const inner = Math.max(1, cell - (cell >= 6 ? 1 : 0))
  const at = (index: number): readonly [number, number] => [(index % columns) * cell, Math.floor(index / columns) * cell]
  canvas.height = Math.max(cell, Math.ceil(clusters / columns) * cell)
  g.fillStyle = "#ffffff"
  g.fillRect(0, 0, canvas.width, canvas.height)
  g.fillStyle = HOST_COLOURS.other
  if (inner === cell) g.fillRect(0, 0, columns * cell, Math.ceil(clusters / columns) * cell)
  else for (let i = 0; i < clusters; i++) g.fillRect(...at(i), inner, inner)
  for (const r of regions) {
    g.fillStyle = HOST_COLOURS[r.kind]
    const last = Math.min(clusters - 1, Math.floor((r.offset + Math.max(1, r.length) - 1) / map.clusterSize))
    for (let i = Math.floor(r.offset / map.clusterSize); i <= last; i++) g.fillRect(...at(i), inner, inner)
  }
  let fragments = 0
  let dataClusters = 0
  let previous = -2
  g.fillStyle = HOST_COLOURS.data
  for (const host of map.hosts) {
    if (host < 0) {
      previous = -2
      continue
    }
    const index = Math.floor(host / map.clusterSize)
    if (index !== previous + 1) fragments++
    previous = index
    dataClusters++
    g.fillRect(...at(index), inner, inner)
  }
  return { dataClusters, fragments }
}
