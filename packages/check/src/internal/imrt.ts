/**
 * The in-memory refcount table of a check (QEMU calls it the IMRT): the
 * number of references counted for every host cluster, built from the
 * metadata and compared with the refcounts stored in the image.
 *
 * One 16-bit counter per host cluster keeps memory at 2 bytes per cluster
 * of the file. Counts never exceed the image's largest refcount
 * (2^refcount_bits - 1), as in QEMU, where the array has the image's own
 * entry width: a cluster referenced more often than a refcount can say is an
 * overflow corruption. Counts of 65535 and more (refcount_bits 32 and 64)
 * live in a side map; such clusters are rare.
 */
export class Imrt {
  private counts: Uint16Array
  private wide: Map<number, number> | undefined
  /** Number of clusters covered (QEMU's nb_clusters); grows as references land past it. */
  size: number

  constructor(size: number, readonly max: number) {
    this.size = size
    this.counts = new Uint16Array(Math.max(16, size + 1))
    this.wide = max > 0xffff ? new Map() : undefined
  }

  get(cluster: number): number {
    if (cluster >= this.size) return 0
    const v = this.counts[cluster]!
    if (v === 0xffff && this.wide !== undefined) return this.wide.get(cluster) ?? 0xffff
    return v
  }

  set(cluster: number, value: number): void {
    if (cluster >= this.size) this.grow(cluster + 1)
    if (this.wide !== undefined) {
      if (value >= 0xffff) {
        this.counts[cluster] = 0xffff
        this.wide.set(cluster, value)
        return
      }
      if (this.counts[cluster] === 0xffff) this.wide.delete(cluster)
    }
    this.counts[cluster] = value
  }

  /** Adds one reference; false (count unchanged) when the count is already at the maximum. */
  increment(cluster: number): boolean {
    if (cluster < this.size) {
      const c = this.counts[cluster]!
      if (c < 0xfffe && c < this.max) {
        this.counts[cluster] = c + 1
        return true
      }
    }
    const v = this.get(cluster)
    if (v >= this.max) return false
    this.set(cluster, v + 1)
    return true
  }

  /** Makes the table cover `size` clusters (new ones count zero). */
  grow(size: number): void {
    if (size <= this.size) return
    if (size > this.counts.length) {
      const next = new Uint16Array(Math.max(size, Math.min(this.counts.length * 2, size + (1 << 20))))
      next.set(this.counts.subarray(0, this.size))
      this.counts = next
    }
    this.size = size
  }

  /** Forgets every count, keeping the covered size. */
  clear(): void {
    this.counts.fill(0)
    this.wide?.clear()
  }

  /**
   * Finds `count` contiguous free clusters at or after `*firstFree`, growing
   * the table past its end when needed, and marks them with refcount 1
   * (QEMU's alloc_clusters_imrt, so that a rebuilt structure lands where
   * QEMU would put it). `cursor.firstFree` moves to the first free cluster
   * seen. Returns the first cluster index.
   */
  allocate(count: number, cursor: { firstFree: number }): number {
    let cluster = cursor.firstFree
    let firstGap = true
    let run = 0
    for (; cluster < this.size && run < count; cluster++) {
      if (this.get(cluster) === 0) {
        run++
        if (firstGap) {
          cursor.firstFree = cluster
          firstGap = false
        }
      } else if (run !== 0) {
        run = 0
      }
    }
    if (run < count) this.grow(cluster + count - run)
    const start = cluster - run
    for (let i = 0; i < count; i++) this.set(start + i, 1)
    return start
  }
}

/** Largest IMRT we build (2 bytes per cluster): 2^27 clusters, 8 TiB of 64 KiB clusters. */
export const MAX_IMRT_CLUSTERS = 2 ** 27
