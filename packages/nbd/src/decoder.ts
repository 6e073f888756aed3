/**
 * Incremental decoder of what an NBD client sends: the client flags, then
 * options (handshake), then requests (transmission). Pure: bytes go in with
 * `push`, messages come out of `next`, in order; the caller switches the
 * phase (`enterTransmission`) when the negotiation says so.
 *
 * Memory is bounded by construction: option data longer than
 * `maxOptionData` and write payloads longer than `maxPayload` are skipped
 * as they stream in, never buffered; a length read from the wire is
 * checked before anything is allocated for it.
 */
import { IHAVEOPT, MAX_OPTION_DATA, MAX_PAYLOAD, REQUEST_MAGIC, Command } from "./protocol.js"

/** One request header (proto.md "Request message"). */
export interface Request {
  readonly flags: number
  readonly type: number
  /** The 8-byte handle, as two 32-bit halves (echoed back unchanged). */
  readonly handleHigh: number
  readonly handleLow: number
  /** Byte offset; `Infinity` when the 64-bit value does not fit a safe integer (always out of range). */
  readonly offset: number
  readonly length: number
}

/** What the decoder has read. */
export type ClientMessage =
  | { readonly kind: "clientFlags"; readonly flags: number }
  | { readonly kind: "option"; readonly option: number; readonly data: Uint8Array }
  /** An option whose data was longer than the limit: skipped, not buffered. */
  | { readonly kind: "oversizedOption"; readonly option: number; readonly length: number }
  | { readonly kind: "request"; readonly request: Request; readonly payload: Uint8Array | undefined }
  /** A write whose payload was longer than the limit: skipped, not buffered. */
  | { readonly kind: "oversizedWrite"; readonly request: Request }
  /** Not NBD (a wrong magic): the connection must be dropped. */
  | { readonly kind: "malformed"; readonly reason: string }

type Phase = "clientFlags" | "options" | "transmission" | "broken"

type Body =
  | { readonly kind: "option"; readonly option: number; readonly data: Uint8Array; filled: number }
  | { readonly kind: "skipOption"; readonly option: number; readonly length: number; remaining: number }
  | { readonly kind: "payload"; readonly request: Request; readonly data: Uint8Array; filled: number }
  | { readonly kind: "skipPayload"; readonly request: Request; remaining: number }

const OPTION_HEADER = 16
const REQUEST_HEADER = 28

/** Bounds on what a client may send: option data and write payloads longer than these are skipped, never buffered. */
export interface DecoderLimits {
  readonly maxOptionData?: number
  readonly maxPayload?: number
}

/** The decoder of one connection's client bytes (see the module comment). */
export class ClientDecoder {
  private readonly chunks: Uint8Array[] = []
  /** Read position in chunks[0]. */
  private head = 0
  private buffered = 0
  private phase: Phase = "clientFlags"
  private body: Body | undefined
  private readonly scratch = new Uint8Array(REQUEST_HEADER)
  private readonly view = new DataView(this.scratch.buffer)
  private readonly maxOptionData: number
  private readonly maxPayload: number

  constructor(limits: DecoderLimits = {}) {
    this.maxOptionData = limits.maxOptionData ?? MAX_OPTION_DATA
    this.maxPayload = limits.maxPayload ?? MAX_PAYLOAD
  }

  /** Appends bytes from the client (the decoder keeps a reference: do not reuse the buffer). */
  push(bytes: Uint8Array): void {
    if (bytes.length === 0 || this.phase === "broken") return
    this.chunks.push(bytes)
    this.buffered += bytes.length
  }

  /** Bytes received and not yet decoded (not counting a payload being filled). */
  get pending(): number {
    return this.buffered
  }

  /** From now on, decode requests instead of options (after NBD_OPT_GO or NBD_OPT_EXPORT_NAME succeeded). */
  enterTransmission(): void {
    if (this.phase !== "broken") this.phase = "transmission"
  }

  /** The next complete message, or undefined until more bytes arrive. */
  next(): ClientMessage | undefined {
    if (this.body !== undefined) return this.continueBody()
    switch (this.phase) {
      case "broken":
        return undefined
      case "clientFlags": {
        if (this.buffered < 4) return undefined
        this.take(4)
        this.phase = "options"
        return { kind: "clientFlags", flags: this.view.getUint32(0) }
      }
      case "options": {
        if (this.buffered < OPTION_HEADER) return undefined
        this.take(OPTION_HEADER)
        if (this.view.getBigUint64(0) !== IHAVEOPT) return this.broken("option without the IHAVEOPT magic")
        const option = this.view.getUint32(8)
        const length = this.view.getUint32(12)
        this.body =
          length > this.maxOptionData
            ? { kind: "skipOption", option, length, remaining: length }
            : { kind: "option", option, data: new Uint8Array(length), filled: 0 }
        return this.continueBody()
      }
      case "transmission": {
        if (this.buffered < REQUEST_HEADER) return undefined
        this.take(REQUEST_HEADER)
        const v = this.view
        if (v.getUint32(0) !== REQUEST_MAGIC) return this.broken("request without the NBD request magic")
        const high = v.getUint32(16)
        const request: Request = {
          flags: v.getUint16(4),
          type: v.getUint16(6),
          handleHigh: v.getUint32(8),
          handleLow: v.getUint32(12),
          offset: high < 0x200000 ? high * 2 ** 32 + v.getUint32(20) : Infinity,
          length: v.getUint32(24)
        }
        // Only NBD_CMD_WRITE carries data; every other request's length is a range, not bytes to come.
        if (request.type !== Command.WRITE) return { kind: "request", request, payload: undefined }
        this.body =
          request.length > this.maxPayload
            ? { kind: "skipPayload", request, remaining: request.length }
            : { kind: "payload", request, data: new Uint8Array(request.length), filled: 0 }
        return this.continueBody()
      }
    }
  }

  private broken(reason: string): ClientMessage {
    this.phase = "broken"
    this.chunks.length = 0
    this.buffered = 0
    this.head = 0
    return { kind: "malformed", reason }
  }

  /** Fills or skips the body in progress; the message once it is complete. */
  private continueBody(): ClientMessage | undefined {
    const body = this.body!
    switch (body.kind) {
      case "option":
      case "payload": {
        body.filled += this.copyInto(body.data, body.filled)
        if (body.filled < body.data.length) return undefined
        this.body = undefined
        return body.kind === "option"
          ? { kind: "option", option: body.option, data: body.data }
          : { kind: "request", request: body.request, payload: body.data }
      }
      case "skipOption":
      case "skipPayload": {
        body.remaining -= this.discard(body.remaining)
        if (body.remaining > 0) return undefined
        this.body = undefined
        return body.kind === "skipOption"
          ? { kind: "oversizedOption", option: body.option, length: body.length }
          : { kind: "oversizedWrite", request: body.request }
      }
    }
  }

  /** Moves `n` buffered bytes (n ≤ buffered, n ≤ 28) into the scratch header. */
  private take(n: number): void {
    this.copyInto(this.scratch.subarray(0, n), 0)
  }

  /** Copies buffered bytes into `into` from `at`; returns how many. */
  private copyInto(into: Uint8Array, at: number): number {
    let copied = 0
    while (at + copied < into.length && this.chunks.length > 0) {
      const chunk = this.chunks[0]!
      const n = Math.min(chunk.length - this.head, into.length - at - copied)
      into.set(chunk.subarray(this.head, this.head + n), at + copied)
      copied += n
      this.advance(n)
    }
    return copied
  }

  /** Drops up to `n` buffered bytes; returns how many. */
  private discard(n: number): number {
    let dropped = 0
    while (dropped < n && this.chunks.length > 0) {
      const step = Math.min(this.chunks[0]!.length - this.head, n - dropped)
      dropped += step
      this.advance(step)
    }
    return dropped
  }

  private advance(n: number): void {
    this.head += n
    this.buffered -= n
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift()
      this.head = 0
    }
  }
}
