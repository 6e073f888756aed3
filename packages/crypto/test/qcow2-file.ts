/**
 * A whole qcow2 file held in memory, read through the @qcow2/format codecs
 * (header and extensions, L1 and L2 entries), for the oracle tests: crypt
 * method, the full disk encryption extension, and guest→host lookups.
 */
import {
  decodeImageHeader,
  type ImageHeader,
  IncompatibleFeature,
  makeGeometry,
  readL1Entry,
  readL2Entry
} from "@qcow2/format"

export interface Qcow2File {
  readonly image: ImageHeader
  /** Host offset of the data cluster holding guest byte `guest`, or undefined when none is allocated. */
  hostCluster(guest: number): number | undefined
}

export const readQcow2File = (file: Uint8Array): Qcow2File => {
  const image = decodeImageHeader(file.subarray(0, Math.min(file.length, 2 * 1024 * 1024)))
  const { header } = image
  const extendedL2 = (header.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n
  const geometry = makeGeometry(header.clusterBits, extendedL2, header.refcountOrder)
  const l1 = file.subarray(header.l1TableOffset, header.l1TableOffset + header.l1Size * 8)
  return {
    image,
    hostCluster: (guest) => {
      const index = Math.floor(guest / geometry.clusterSize)
      const l1Index = Math.floor(index / geometry.l2Entries)
      if (l1Index >= header.l1Size) return undefined
      const { l2Offset } = readL1Entry(l1, l1Index)
      if (l2Offset === 0) return undefined
      const l2 = file.subarray(l2Offset, l2Offset + geometry.clusterSize)
      const entry = readL2Entry(l2, index % geometry.l2Entries, geometry)
      switch (entry._tag) {
        case "Normal":
        case "Subclusters":
          return entry.hostOffset === 0 ? undefined : entry.hostOffset
        case "Invalid":
          throw new Error(`invalid L2 entry for guest offset ${guest}: ${entry.reason}`)
        default:
          return undefined
      }
    }
  }
}
