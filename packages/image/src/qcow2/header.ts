import { Effect } from "effect"
import { encodeHeader, encodeImageHeader, IncompatibleFeature } from "@qcow2/format"
import type { Header, ImageHeader } from "@qcow2/format"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"

/**
 * The header as the driver keeps it: the decoded cluster 0 plus the mutable
 * fields the driver changes (L1/refcount table location, feature bits,
 * size). Changes are written through with flush barriers (rule 4).
 */
export class HeaderState {
  constructor(
    private readonly storage: BlockStorageShape,
    public image: ImageHeader
  ) {}

  get header(): Header {
    return this.image.header
  }

  /** Rewrites only the fixed header fields in place (extensions unchanged). */
  update(patch: Partial<Header>): Effect.Effect<void, StorageError> {
    this.image = { ...this.image, header: { ...this.image.header, ...patch } }
    const bytes = encodeHeader(this.image.header)
    return Effect.andThen(
      this.storage.flush(),
      Effect.andThen(this.storage.write(0, bytes), this.storage.flush())
    )
  }

  /** Rewrites header, extensions and backing name (cluster 0). */
  rewriteAll(next: ImageHeader): Effect.Effect<void, StorageError> {
    this.image = next
    const bytes = encodeImageHeader(next)
    return Effect.andThen(this.storage.flush(), Effect.andThen(this.storage.write(0, bytes), this.storage.flush()))
  }

  hasIncompatible(bit: bigint): boolean {
    return (this.image.header.incompatibleFeatures & bit) !== 0n
  }

  setIncompatible(bit: bigint, on: boolean): Effect.Effect<void, StorageError> {
    const current = this.image.header.incompatibleFeatures
    const next = on ? current | bit : current & ~bit
    if (next === current) return Effect.void
    return this.update({ incompatibleFeatures: next })
  }
}

export const DIRTY = IncompatibleFeature.Dirty
export const CORRUPT = IncompatibleFeature.Corrupt
