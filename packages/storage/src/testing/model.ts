/**
 * A plain reference store in one growable buffer: what a BlockStorage must
 * behave like (reads past the end give zeros, writes grow, resize cuts or
 * zero-extends). Used by the conformance suite and the crash recorder.
 */
export class ModelStore {
  private bytes: Uint8Array
  private length: number

  constructor(initial?: Uint8Array) {
    this.bytes = new Uint8Array(Math.max(1024, initial?.length ?? 0))
    this.length = 0
    if (initial !== undefined) this.write(0, initial)
  }

  get size(): number {
    return this.length
  }

  private reserve(capacity: number): void {
    if (capacity <= this.bytes.length) return
    const next = new Uint8Array(Math.max(capacity, this.bytes.length * 2))
    next.set(this.bytes.subarray(0, this.length))
    this.bytes = next
  }

  /** Writes `data` at `offset`, growing the model. */
  write(offset: number, data: Uint8Array): void {
    if (data.length === 0) return
    this.reserve(offset + data.length)
    this.bytes.set(data, offset)
    this.length = Math.max(this.length, offset + data.length)
  }

  /** Grows with zeros or cuts to `size`. */
  resize(size: number): void {
    if (size < this.length) this.bytes.fill(0, size, this.length)
    else this.reserve(size)
    this.length = size
  }

  /** Zeroes the part of [offset, offset + length) inside the store. */
  zero(offset: number, length: number): void {
    if (offset < this.length) this.bytes.fill(0, offset, Math.min(offset + length, this.length))
  }

  /** The `length` bytes at `offset` (zeros past the end). */
  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length)
    if (offset < this.length) out.set(this.bytes.subarray(offset, Math.min(offset + length, this.length)))
    return out
  }

  /** A copy of the whole content. */
  contents(): Uint8Array {
    return this.bytes.slice(0, this.length)
  }
}
