/**
 * Exact reads from a byte transport: the client reads each message header
 * whole, then reads a payload straight into where it belongs (a caller's
 * read buffer) or skips it. Nothing here allocates from a length the
 * server sent; callers bound every length before asking for it.
 */
import { Effect } from "effect"
import type { Transport } from "../connection.js"

/** The stream ended before `wanted` bytes came. */
export interface StreamEnded {
  readonly _tag: "StreamEnded"
  readonly wanted: number
  readonly got: number
}

/** Buffers what the transport delivers and hands it out in exact amounts. */
export class ExactReader {
  private chunk: Uint8Array = new Uint8Array(0)
  private head = 0

  constructor(private readonly transport: Transport) {}

  /** Fills `into` completely, or fails when the stream ends first. */
  fill(into: Uint8Array): Effect.Effect<void, StreamEnded> {
    // The common case (the bytes are already here) costs no generator.
    if (this.chunk.length - this.head >= into.length) {
      into.set(this.chunk.subarray(this.head, this.head + into.length))
      this.head += into.length
      return Effect.void
    }
    const self = this
    return Effect.gen(function* () {
      let filled = 0
      while (filled < into.length) {
        if (self.head === self.chunk.length) {
          const next = yield* self.transport.read
          if (next === undefined) return yield* Effect.fail<StreamEnded>({ _tag: "StreamEnded", wanted: into.length, got: filled })
          self.chunk = next
          self.head = 0
        }
        const n = Math.min(self.chunk.length - self.head, into.length - filled)
        into.set(self.chunk.subarray(self.head, self.head + n), filled)
        self.head += n
        filled += n
      }
    })
  }

  /** `n` fresh bytes (n is bounded by the caller). */
  bytes(n: number): Effect.Effect<Uint8Array, StreamEnded> {
    const out = new Uint8Array(n)
    return Effect.as(this.fill(out), out)
  }

  /** Drops `n` bytes, in bounded steps. */
  skip(n: number): Effect.Effect<void, StreamEnded> {
    const scratch = new Uint8Array(Math.min(n, 64 * 1024))
    const self = this
    return Effect.gen(function* () {
      for (let left = n; left > 0; left -= scratch.length) yield* self.fill(scratch.subarray(0, Math.min(left, scratch.length)))
    })
  }
}
