import { type MetadataKind, OverlapIndex } from "@qcow2/format"
import { l1Entry, reftableEntry } from "./entries.js"
import type { ImageInfo } from "./state.js"

/**
 * Guards the metadata writes of a repair the way QEMU's default overlap
 * check ("cached": everything but inactive L2 tables) does, through the
 * format's OverlapIndex built from what the check read. The index is built
 * on first use (only repairs write) and rebuilt after `invalidate`, when a
 * repair moved a structure.
 */
export class MetadataGuard {
  private index: OverlapIndex | undefined

  constructor(private readonly img: ImageInfo) {}

  invalidate(): void {
    this.index = undefined
  }

  private build(): OverlapIndex {
    const img = this.img
    const cs = img.clusterSize
    const index = new OverlapIndex(cs)
    index.setRanges("active L1 table", [{ offset: img.l1TableOffset, length: img.l1Size * 8 }])
    index.setRanges("refcount table", [{ offset: img.reftableOffset, length: img.reftableEntries * 8 }])
    index.setRanges("snapshot table", [{ offset: img.snapshotsOffset, length: img.snapshotsSize }])
    index.setRanges(
      "inactive L1 table",
      img.snapshots.map((s) => ({ offset: s.l1Offset, length: s.l1Size * 8 }))
    )
    const dir = img.bitmaps
    if (dir !== undefined) index.setRanges("bitmap directory", [{ offset: dir.directoryOffset, length: dir.directorySize }])
    // An unaligned table covers two clusters, as QEMU compares byte ranges.
    const mark = (kind: "active L2 table" | "refcount block", offset: number) => {
      index.addCluster(kind, offset)
      if (offset % cs !== 0) index.addCluster(kind, offset + cs - 1)
    }
    for (let i = 0; i * 8 < img.activeL1.length && i < img.l1Size; i++) {
      const o = l1Entry(img.activeL1, i).l2Offset
      if (o !== 0) mark("active L2 table", o)
    }
    for (let i = 0; i * 8 < img.reftable.length && i < img.reftableEntries; i++) {
      const o = reftableEntry(img.reftable, i).offset
      if (o !== 0) mark("refcount block", o)
    }
    return index
  }

  /** The first metadata structure (not in `ignore`) that `[offset, offset + size)` touches, if any. */
  find(offset: number, size: number, ignore: ReadonlyArray<MetadataKind>): MetadataKind | undefined {
    this.index ??= this.build()
    return this.index.find(offset, size, ignore)
  }
}
