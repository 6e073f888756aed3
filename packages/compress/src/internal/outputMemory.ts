/**
 * Output memory of the compression jobs on libuv's threads, reused from
 * one request to the next. A request takes the smallest spare buffer that
 * holds it, else a new one of its length rounded up to a power of two, so
 * that requests of every length share a few buffers instead of keeping
 * spares of each size (a `convert -c` of the 1 GiB mixed image kept 5 MiB
 * of 1 MiB, 512 KiB and 256 KiB spares beside its 2 MiB ones). At most
 * `limitBytes` are kept spare; the smallest go first.
 */
export class OutputMemory {
  /** Spare buffers, smallest first. */
  private readonly spare: Array<ArrayBuffer> = []
  private spareBytes = 0

  constructor(private readonly limitBytes: number) {}

  /** `size` bytes of memory, a view on a spare buffer when one holds them. */
  take(size: number): Uint8Array {
    const index = this.spare.findIndex((buffer) => buffer.byteLength >= size)
    if (index < 0) return new Uint8Array(2 ** Math.ceil(Math.log2(Math.max(1, size)))).subarray(0, size)
    const [buffer] = this.spare.splice(index, 1)
    this.spareBytes -= buffer!.byteLength
    return new Uint8Array(buffer!, 0, size)
  }

  /** Hands back memory `take` gave (any view on it), once nothing writes into it any more. */
  give(view: Uint8Array): void {
    const buffer = view.buffer
    if (!(buffer instanceof ArrayBuffer) || buffer.byteLength > this.limitBytes || this.spare.includes(buffer)) return
    let at = this.spare.findIndex((b) => b.byteLength > buffer.byteLength)
    if (at < 0) at = this.spare.length
    this.spare.splice(at, 0, buffer)
    this.spareBytes += buffer.byteLength
    while (this.spareBytes > this.limitBytes) this.spareBytes -= this.spare.shift()!.byteLength
  }
}
