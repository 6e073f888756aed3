/**
 * Just enough qcow2 parsing for the oracle tests (the real codecs live in
 * @qcow2/format): crypt method, the full-disk-encryption header extension
 * (0x0537BE77) and guest→host lookups through standard L1/L2 tables.
 */
export interface MiniQcow2 {
  readonly cryptMethod: number
  readonly clusterBits: number
  readonly fde: { readonly offset: number; readonly length: number } | undefined
  /** Host offset of the cluster holding `guest`, or undefined when unallocated. */
  hostCluster(guest: number): number | undefined
}

const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n

export const parseMiniQcow2 = (file: Uint8Array): MiniQcow2 => {
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength)
  if (v.getUint32(0) !== 0x514649fb) throw new Error("not a qcow2 file")
  const version = v.getUint32(4)
  const clusterBits = v.getUint32(20)
  const cryptMethod = v.getUint32(32)
  const l1Size = v.getUint32(36)
  const l1Offset = Number(v.getBigUint64(40))
  const headerLength = version >= 3 ? v.getUint32(100) : 72
  let fde: MiniQcow2["fde"]
  for (let off = headerLength; off + 8 <= 1 << clusterBits; ) {
    const type = v.getUint32(off)
    const len = v.getUint32(off + 4)
    if (type === 0) break
    if (type === 0x0537be77) fde = { offset: Number(v.getBigUint64(off + 8)), length: Number(v.getBigUint64(off + 16)) }
    off += 8 + Math.ceil(len / 8) * 8
  }
  const clusterSize = 1 << clusterBits
  const l2Entries = clusterSize / 8
  return {
    cryptMethod,
    clusterBits,
    fde,
    hostCluster: (guest) => {
      const index = Math.floor(guest / clusterSize)
      const l1Index = Math.floor(index / l2Entries)
      if (l1Index >= l1Size) return undefined
      const l2 = Number(v.getBigUint64(l1Offset + l1Index * 8) & OFFSET_MASK)
      if (l2 === 0) return undefined
      const entry = v.getBigUint64(l2 + (index % l2Entries) * 8)
      const host = Number(entry & OFFSET_MASK)
      return host === 0 ? undefined : host
    }
  }
}
