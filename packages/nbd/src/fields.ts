/**
 * A reader of the length-prefixed fields of option data (proto.md "Option
 * haggling"): both sides of the handshake parse them, the server its
 * client's options, the client the server's option replies. Every length
 * is checked against what is left before anything is read.
 */
import { MAX_STRING } from "./protocol.js"

const decoder = new TextDecoder()

/** Reads length-prefixed fields of option data; every length is checked against what is left. */
export class Fields {
  private at = 0
  private readonly view: DataView
  constructor(private readonly data: Uint8Array) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  }
  get left(): number {
    return this.data.length - this.at
  }
  u16(): number | undefined {
    if (this.left < 2) return undefined
    this.at += 2
    return this.view.getUint16(this.at - 2)
  }
  u32(): number | undefined {
    if (this.left < 4) return undefined
    this.at += 4
    return this.view.getUint32(this.at - 4)
  }
  /** A 64-bit size or offset; undefined when it does not fit a safe integer (DESIGN.md "Bytes and numbers"). */
  u64(): number | undefined {
    if (this.left < 8) return undefined
    const high = this.view.getUint32(this.at)
    const low = this.view.getUint32(this.at + 4)
    this.at += 8
    return high < 0x200000 ? high * 2 ** 32 + low : undefined
  }
  /** A string of `length` bytes (at most MAX_STRING). */
  string(length: number): string | undefined {
    if (length > this.left || length > MAX_STRING) return undefined
    this.at += length
    return decoder.decode(this.data.subarray(this.at - length, this.at))
  }
  /** The rest of the data as a string (at most MAX_STRING bytes). */
  rest(): string | undefined {
    return this.string(this.left)
  }
  /** A u32 length, then that many bytes of string. */
  prefixedString(): string | undefined {
    const length = this.u32()
    return length === undefined ? undefined : this.string(length)
  }
}
