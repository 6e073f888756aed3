import { Limits } from "./constants.js"
import { FormatError } from "./errors.js"

/**
 * Sizes derived from cluster_bits, the extended L2 bit and refcount_order
 * (qcow2.txt "Cluster mapping", "Extended L2 Entries", "Host cluster management").
 */
export interface Geometry {
  readonly clusterBits: number
  readonly clusterSize: number
  readonly extendedL2: boolean
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  readonly l2EntrySize: 8 | 16
  /** Entries per L2 table (one cluster). */
  readonly l2Entries: number
  /** log2(l2Entries). */
  readonly l2Bits: number
  readonly subclustersPerCluster: 1 | 32
  readonly subclusterSize: number
  readonly subclusterBits: number
  readonly refcountOrder: number
  /** 1 << refcountOrder */
  readonly refcountBits: number
  /** Entries per refcount block: clusterSize * 8 / refcountBits. */
  readonly refcountBlockEntries: number
}

/** Validates the parameters and derives the geometry; FormatError InvalidField when out of range. */
export function makeGeometry(clusterBits: number, extendedL2: boolean, refcountOrder: number): Geometry {
  if (!Number.isInteger(clusterBits) || clusterBits < Limits.minClusterBits || clusterBits > Limits.maxClusterBits) {
    throw new FormatError("InvalidField", `cluster_bits must be ${Limits.minClusterBits}..${Limits.maxClusterBits}, got ${clusterBits}`, "cluster_bits")
  }
  if (extendedL2 && clusterBits < 14) {
    throw new FormatError("InvalidField", `extended L2 entries need cluster_bits >= 14, got ${clusterBits}`, "cluster_bits")
  }
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    throw new FormatError("InvalidField", `refcount_order must be 0..6, got ${refcountOrder}`, "refcount_order")
  }
  const clusterSize = 2 ** clusterBits
  const l2Bits = clusterBits - (extendedL2 ? 4 : 3)
  const subclusterBits = extendedL2 ? clusterBits - 5 : clusterBits
  return {
    clusterBits,
    clusterSize,
    extendedL2,
    l2EntrySize: extendedL2 ? 16 : 8,
    l2Entries: 2 ** l2Bits,
    l2Bits,
    subclustersPerCluster: extendedL2 ? 32 : 1,
    subclusterSize: 2 ** subclusterBits,
    subclusterBits,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    refcountBlockEntries: 2 ** (clusterBits + 3 - refcountOrder)
  }
}
