/**
 * Test helpers: an in-memory image, an in-memory transport that plays a
 * scripted client, and builders for what a client sends. The protocol tests
 * use these; the interop tests use real clients (apps/cli/test/serve.test.ts
 * and node.test.ts here).
 */
import { Effect } from "effect"
import { ImageError, type BlockStatus, type Image } from "@qcow2/image"
import type { Transport } from "../src/connection.js"
import { IHAVEOPT, REQUEST_MAGIC } from "../src/protocol.js"

const BLOCK = 4096

/**
 * An in-memory image. It presents itself as qcow2 (so the server trusts its
 * block status for holes); block status reports 4 KiB blocks of zeros as holes.
 */
export const memoryImage = (size: number, readOnly = false): Image & { readonly bytes: Uint8Array; flushes: number } => {
  const bytes = new Uint8Array(size)
  const range = (offset: number, length: number) =>
    offset + length > size ? Effect.fail(new ImageError({ reason: "InvalidArgument", message: "past the end" })) : Effect.void
  const isZero = (start: number, end: number) => bytes.subarray(start, end).every((b) => b === 0)
  const image = {
    bytes,
    flushes: 0,
    format: "qcow2" as const,
    location: "memory",
    readOnly,
    virtualSize: size,
    clusterSize: 512,
    header: undefined,
    snapshots: [],
    backing: undefined,
    backingFileName: undefined,
    backingFileResolved: undefined,
    dataFile: undefined,
    read: (offset: number, into: Uint8Array) => Effect.andThen(range(offset, into.length), Effect.sync(() => into.set(bytes.subarray(offset, offset + into.length)))),
    write: (offset: number, data: Uint8Array) => Effect.andThen(range(offset, data.length), Effect.sync(() => bytes.set(data, offset))),
    writeZeroes: (offset: number, length: number) => Effect.andThen(range(offset, length), Effect.sync(() => bytes.fill(0, offset, offset + length))),
    discard: (offset: number, length: number) => Effect.andThen(range(offset, length), Effect.sync(() => bytes.fill(0, offset, offset + length))),
    writeCompressed: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "no" })),
    flush: () => Effect.sync(() => void image.flushes++),
    truncate: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "no" })),
    blockStatus: (offset: number, length: number): Effect.Effect<BlockStatus, ImageError> =>
      Effect.andThen(
        range(offset, length),
        Effect.sync(() => {
          const blockEnd = (at: number) => Math.min(size, offset + length, (Math.floor(at / BLOCK) + 1) * BLOCK)
          const zero = isZero(offset, blockEnd(offset))
          let end = blockEnd(offset)
          while (end < offset + length && isZero(end, blockEnd(end)) === zero) end = blockEnd(end)
          return { offset, length: end - offset, depth: 0, present: !zero, zero, data: !zero, compressed: false }
        })
      ),
    formatSpecific: () => Effect.succeed({}),
    check: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "no" }))
  }
  return image as unknown as Image & { readonly bytes: Uint8Array; flushes: number }
}

/** A transport whose client sends `chunks` and then closes; everything the server writes is kept. */
export const scriptedTransport = (chunks: ReadonlyArray<Uint8Array>): Transport & { readonly output: () => Uint8Array; closed: boolean } => {
  const queue = [...chunks]
  const written: Uint8Array[] = []
  const transport = {
    closed: false,
    read: Effect.sync(() => queue.shift()),
    write: (parts: ReadonlyArray<Uint8Array>) => Effect.sync(() => void written.push(...parts.map((p) => p.slice()))),
    close: Effect.sync(() => void (transport.closed = true)),
    output: () => concat(written)
  }
  return transport
}

export const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

const utf8 = new TextEncoder()

export const u32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n)
  return b
}
export const u16 = (n: number): Uint8Array => {
  const b = new Uint8Array(2)
  new DataView(b.buffer).setUint16(0, n)
  return b
}
export const str = (s: string): Uint8Array => concat([u32(utf8.encode(s).length), utf8.encode(s)])

/** An option as a client sends it. */
export const option = (code: number, data: Uint8Array = new Uint8Array(0)): Uint8Array => {
  const head = new Uint8Array(16)
  const v = new DataView(head.buffer)
  v.setBigUint64(0, IHAVEOPT)
  v.setUint32(8, code)
  v.setUint32(12, data.length)
  return concat([head, data])
}

/** NBD_OPT_GO / NBD_OPT_INFO data: export name and the info types asked for. */
export const goData = (name: string, infos: ReadonlyArray<number> = []): Uint8Array => concat([str(name), u16(infos.length), ...infos.map(u16)])

/** NBD_OPT_{LIST,SET}_META_CONTEXT data. */
export const metaData = (name: string, queries: ReadonlyArray<string>): Uint8Array => concat([str(name), u32(queries.length), ...queries.map(str)])

/** A request header (and write payload). */
export const request = (type: number, offset: number, length: number, options: { flags?: number; handle?: number; payload?: Uint8Array } = {}): Uint8Array => {
  const head = new Uint8Array(28)
  const v = new DataView(head.buffer)
  v.setUint32(0, REQUEST_MAGIC)
  v.setUint16(4, options.flags ?? 0)
  v.setUint16(6, type)
  v.setUint32(12, options.handle ?? 1)
  v.setBigUint64(16, BigInt(offset))
  v.setUint32(24, length)
  return options.payload !== undefined ? concat([head, options.payload]) : head
}

/** What the server sent, cut into messages. */
export type ServerMessage =
  | { readonly kind: "greeting"; readonly flags: number }
  | { readonly kind: "optionReply"; readonly option: number; readonly type: number; readonly data: Uint8Array }
  | { readonly kind: "exportName"; readonly size: number; readonly flags: number }
  | { readonly kind: "simple"; readonly error: number; readonly handle: number; readonly data: Uint8Array }
  | { readonly kind: "chunk"; readonly flags: number; readonly type: number; readonly handle: number; readonly payload: Uint8Array }

/**
 * Parses server output. `readLengths` gives, in order, the byte count of
 * each successful simple read reply (the stream alone cannot tell).
 */
export const parseServer = (out: Uint8Array, options: { exportNameReply?: boolean; readLengths?: number[] } = {}): ServerMessage[] => {
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength)
  const messages: ServerMessage[] = [{ kind: "greeting", flags: v.getUint16(16) }]
  let at = 18
  const reads = [...(options.readLengths ?? [])]
  let transmission = false
  while (at < out.length) {
    if (!transmission && v.getBigUint64(at) === 0x3e889045565a9n) {
      const length = v.getUint32(at + 16)
      const m = { kind: "optionReply", option: v.getUint32(at + 8), type: v.getUint32(at + 12), data: out.slice(at + 20, at + 20 + length) } as const
      messages.push(m)
      at += 20 + length
      if (m.option === 7 && m.type === 1) transmission = true
      continue
    }
    if (!transmission && options.exportNameReply === true) {
      messages.push({ kind: "exportName", size: Number(v.getBigUint64(at)), flags: v.getUint16(at + 8) })
      at += 10
      transmission = true
      continue
    }
    const magic = v.getUint32(at)
    if (magic === 0x67446698) {
      const error = v.getUint32(at + 4)
      const n = error === 0 ? (reads.shift() ?? 0) : 0
      messages.push({ kind: "simple", error, handle: v.getUint32(at + 12), data: out.slice(at + 16, at + 16 + n) })
      at += 16 + n
    } else if (magic === 0x668e33ef) {
      const length = v.getUint32(at + 16)
      messages.push({ kind: "chunk", flags: v.getUint16(at + 4), type: v.getUint16(at + 6), handle: v.getUint32(at + 12), payload: out.slice(at + 20, at + 20 + length) })
      at += 20 + length
    } else throw new Error(`unparseable server output at ${at}`)
  }
  return messages
}
