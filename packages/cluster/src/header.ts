import { Effect } from "effect"
import { encodeHeader, encodeImageHeader } from "@qcow2/format"
import type { Header, ImageHeader } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"

/**
 * The image header as the engine keeps it: the decoded cluster 0, with the
 * fields the engine changes (L1 and refcount table location, feature bits,
 * virtual size).
 *
 * Consistency rule 4 lives here: every header change is written through,
 * with a flush barrier before (what the new header names is durable) and
 * after (nothing later overtakes it).
 *
 * A v2 header has no feature fields: bits set on a v2 image (corrupt,
 * dirty) are kept in memory only, as QEMU's qcow2_update_header does.
 */
export class HeaderState {
  private current: ImageHeader

  constructor(
    private readonly storage: BlockStorageShape,
    image: ImageHeader
  ) {
    this.current = image
  }

  get image(): ImageHeader {
    return this.current
  }

  get header(): Header {
    return this.current.header
  }

  /**
   * Virtual disk size in bytes: the header's size rounded down to whole
   * 512-byte sectors, as QEMU sees it (bs->total_sectors); a size of 1
   * byte is an empty disk.
   */
  get size(): number {
    return Math.floor(this.current.header.size / 512) * 512
  }

  /**
   * Rewrites only the fixed header fields in place (extensions unchanged).
   * The new fields count only once written: after a failed write, memory
   * still says what the disk says.
   */
  update(patch: Partial<Header>): Effect.Effect<void, StorageError> {
    const next = { ...this.current, header: { ...this.current.header, ...patch } }
    return this.writeThrough(next, encodeHeader(onDisk(next.header)))
  }

  /**
   * Rewrites header, extensions and backing name: the whole of cluster 0,
   * zero-padded as QEMU's qcow2_update_header writes it, so nothing of a
   * longer previous backing name or extension area is left behind.
   */
  rewriteAll(next: ImageHeader): Effect.Effect<void, StorageError> {
    const used = encodeImageHeader({ ...next, header: onDisk(next.header) })
    const cluster = new Uint8Array(Math.max(used.length, 2 ** next.header.clusterBits))
    cluster.set(used)
    return this.writeThrough(next, cluster)
  }

  /** Sets or clears incompatible feature bits (dirty, corrupt). */
  setIncompatible(bits: bigint, on: boolean): Effect.Effect<void, StorageError> {
    const was = this.current.header.incompatibleFeatures
    const next = on ? was | bits : was & ~bits
    if (next === was) return Effect.void
    return this.update({ incompatibleFeatures: next })
  }

  /** Adopts the header a repair wrote, without writing it again. */
  adopt(image: ImageHeader): void {
    this.current = image
  }

  private writeThrough(next: ImageHeader, bytes: Uint8Array): Effect.Effect<void, StorageError> {
    return Effect.andThen(
      this.storage.flush(),
      Effect.andThen(
        this.storage.write(0, bytes),
        Effect.andThen(
          Effect.sync(() => {
            this.current = next
          }),
          this.storage.flush()
        )
      )
    )
  }
}

/** The header as it goes to disk: a v2 header has no feature fields. */
const onDisk = (header: Header): Header =>
  header.version === 2 ? { ...header, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n } : header
