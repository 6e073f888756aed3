/**
 * The extents `qemu-img map --output=json` lists (qemu-img.c MapEntry):
 * block status of every layer of a backing chain, merged where QEMU merges.
 */
import { Effect } from "effect"
import { CryptMethod } from "@qcow2/format"
import type { BlockStatus, Image } from "./api.js"
import { ImageError } from "./errors.js"
import { pathCombine } from "./info.js"

/** One image of a backing chain and the name QEMU shows for it. */
export interface ChainLayer {
  readonly name: string
  readonly image: Image
}

/** The images of a backing chain, top first, named as QEMU names them (backing names combined with the referring image's). */
export const chainLayers = (top: Image, name: string): ChainLayer[] => {
  const layers: ChainLayer[] = [{ name, image: top }]
  let current = top
  let currentName = name
  while (current.backing !== undefined) {
    currentName = pathCombine(currentName, current.backingFileName ?? current.backing.location)
    layers.push({ name: currentName, image: current.backing })
    current = current.backing
  }
  return layers
}

/** One record of `qemu-img map` (qemu-img.c MapEntry). */
export interface MapEntry {
  start: number
  length: number
  /** Chain depth of the layer that holds the bytes (0 = the image itself). */
  readonly depth: number
  readonly present: boolean
  readonly zero: boolean
  readonly data: boolean
  /** Host offset of the data, when there is a plain mapping (not compressed, not encrypted). */
  readonly offset?: number
  /** File holding the data, when `offset` is set (human output only). */
  readonly filename?: string
}

/** qemu-img.c entry_mergeable: same status and, with offsets, contiguous in the same file. */
export const mergeable = (curr: MapEntry, next: MapEntry): boolean => {
  if (curr.length === 0) return false
  if (curr.zero !== next.zero || curr.data !== next.data || curr.depth !== next.depth || curr.present !== next.present) return false
  if ((curr.filename === undefined) !== (next.filename === undefined)) return false
  if (curr.filename !== undefined && curr.filename !== next.filename) return false
  if ((curr.offset === undefined) !== (next.offset === undefined)) return false
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false
  return true
}

/**
 * Converts the driver's block status into qemu-img's record. QEMU reports
 * no host offset for compressed or encrypted data (there is no plain
 * mapping to show), and names the file that holds the bytes: the layer at
 * `depth`, or its external data file.
 */
export const toMapEntry = (status: BlockStatus, layers: ReadonlyArray<ChainLayer>): MapEntry => {
  const layer = layers[Math.min(status.depth, layers.length - 1)]!
  const encrypted = (layer.image.header?.header.cryptMethod ?? CryptMethod.None) !== CryptMethod.None
  const hasOffset = status.hostOffset !== undefined && !status.compressed && !encrypted
  const dataFile = layer.image.header?.extensions.externalDataFile
  return {
    start: status.offset,
    length: status.length,
    // The driver reports the chain length when no layer has the bytes; qemu-img reports the last layer it asked.
    depth: status.present ? status.depth : Math.min(status.depth, layers.length - 1),
    present: status.present,
    zero: status.zero,
    data: status.data,
    ...(hasOffset ? { offset: status.hostOffset!, filename: layer.image.dataFile !== undefined && dataFile !== undefined ? dataFile : layer.name } : {})
  }
}

/** Largest block-status request (qemu-img map asks for at most 1 GiB at a time). */
const MAX_STATUS_REQUEST = 2 ** 30

/**
 * The merged extents of [start, start + length) of `image` (shown as
 * `name`), in order, as `qemu-img map --output=json` lists them.
 */
export const mapImage = (image: Image, name: string, start = 0, length?: number): Effect.Effect<MapEntry[], ImageError> =>
  Effect.gen(function* () {
    if (!Number.isSafeInteger(start) || start < 0 || (length !== undefined && (!Number.isSafeInteger(length) || length < 0))) {
      return yield* new ImageError({ reason: "InvalidArgument", message: `invalid map range: start ${start}, length ${length}`, location: image.location })
    }
    const layers = chainLayers(image, name)
    const end = length === undefined ? image.virtualSize : Math.min(image.virtualSize, start + length)
    const entries: MapEntry[] = []
    let curr: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false }
    while (curr.start + curr.length < end) {
      const offset = curr.start + curr.length
      const status = yield* image.blockStatus(offset, Math.min(end - offset, MAX_STATUS_REQUEST))
      const next = toMapEntry({ ...status, length: Math.min(status.length, end - offset) }, layers)
      if (next.length <= 0) {
        return yield* new ImageError({ reason: "Corrupt", message: `no block status progress at offset ${offset}`, location: image.location })
      }
      if (mergeable(curr, next)) {
        curr.length += next.length
        continue
      }
      if (curr.length > 0) entries.push(curr)
      curr = next
    }
    if (curr.length > 0 || entries.length === 0) entries.push(curr)
    return entries
  })
