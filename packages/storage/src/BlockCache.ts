/**
 * LRU cache of file blocks keyed by block index, bounded in bytes.
 *
 * A JS `Map` iterates in insertion order, so re-inserting a key on every hit
 * keeps the least recently used block first: eviction takes the first key.
 * Plain synchronous code: a hit costs two map operations, no Effect.
 */
export class BlockCache {
  private readonly blocks = new Map<number, Uint8Array>()
  private used = 0
  /** Blocks dropped to stay within capacity since creation. */
  evictions = 0

  constructor(readonly capacityBytes: number) {}

  /** Returns the block and marks it most recently used. */
  get(index: number): Uint8Array | undefined {
    const block = this.blocks.get(index)
    if (block !== undefined) {
      this.blocks.delete(index)
      this.blocks.set(index, block)
    }
    return block
  }

  /** True when the block is cached; does not change its recency. */
  has(index: number): boolean {
    return this.blocks.has(index)
  }

  /** Inserts (or replaces) a block as most recently used, evicting the least recently used ones. */
  set(index: number, block: Uint8Array): void {
    if (block.length > this.capacityBytes) return
    const old = this.blocks.get(index)
    if (old !== undefined) {
      this.blocks.delete(index)
      this.used -= old.length
    }
    this.blocks.set(index, block)
    this.used += block.length
    while (this.used > this.capacityBytes) {
      const first = this.blocks.entries().next()
      if (first.done === true) break
      const [key, value] = first.value
      this.blocks.delete(key)
      this.used -= value.length
      this.evictions++
    }
  }

  get size(): number {
    return this.blocks.size
  }

  get bytes(): number {
    return this.used
  }

  /** Drops every cached block. */
  clear(): void {
    this.blocks.clear()
    this.used = 0
  }
}
