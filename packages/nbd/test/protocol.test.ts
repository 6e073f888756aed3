/**
 * The protocol without sockets: the decoder over arbitrary splits and
 * hostile lengths, option haggling, requests and their error values, and a
 * property that random byte streams (raw or after a valid handshake) never
 * crash or hang a connection.
 */
import { Effect } from "effect"
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { ClientDecoder } from "../src/decoder.js"
import { serveConnection } from "../src/connection.js"
import type { ServerConfig } from "../src/negotiate.js"
import { ChunkType, Command, CommandFlag, Errno, Info, Option, Reply, TransmissionFlag } from "../src/protocol.js"
import { concat, goData, memoryImage, metaData, option, parseServer, request, scriptedTransport, u32, type ServerMessage } from "./helpers.js"

const MiB = 1 << 20

const config = (readOnly = false, size = 4 * MiB): ServerConfig & { readonly image: ReturnType<typeof memoryImage> } => {
  const image = memoryImage(size, readOnly)
  return { image, exports: [{ name: "disk", image, description: "test" }], multiConn: false }
}

/** Runs a whole scripted connection and parses what the server sent. */
const session = (chunks: ReadonlyArray<Uint8Array>, c = config(), parse: Parameters<typeof parseServer>[1] = {}) => {
  const transport = scriptedTransport(chunks)
  const end = Effect.runSync(serveConnection(transport, c))
  return { end, closed: transport.closed, messages: parseServer(transport.output(), parse), image: c.image }
}

const FIXED = u32(3) // fixed newstyle + no zeroes
const go = (name = "disk", infos: number[] = []) => option(Option.GO, goData(name, infos))
const structured = option(Option.STRUCTURED_REPLY)
const replies = (ms: ServerMessage[]) => ms.filter((m) => m.kind === "optionReply")

describe("decoder", () => {
  it("decodes the same messages however the bytes are split", () => {
    const stream = concat([FIXED, go(), request(Command.WRITE, 512, 3, { payload: new Uint8Array([1, 2, 3]) }), request(Command.READ, 0, 8)])
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 8 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b)
        const d = new ClientDecoder()
        const out: string[] = []
        let last = 0
        for (const p of [...points, stream.length]) {
          d.push(stream.slice(last, p))
          last = p
          for (let m = d.next(); m !== undefined; m = d.next()) {
            out.push(m.kind === "request" ? `req${m.request.type}:${m.request.offset}:${m.payload?.join(",") ?? ""}` : m.kind)
            if (m.kind === "option") d.enterTransmission()
          }
        }
        expect(out).toEqual(["clientFlags", "option", "req1:512:1,2,3", "req0:0:"])
      })
    )
  })

  it("skips option data and write payloads over the limits without buffering them", () => {
    const d = new ClientDecoder({ maxOptionData: 16, maxPayload: 8 })
    d.push(concat([FIXED, option(Option.LIST, new Uint8Array(100))]))
    expect(d.next()?.kind).toBe("clientFlags")
    expect(d.next()).toEqual({ kind: "oversizedOption", option: Option.LIST, length: 100 })
    d.enterTransmission()
    // A 4 GiB - 1 write announced: nothing is allocated for it, its bytes are dropped as they come.
    d.push(request(Command.WRITE, 0, 0xffffffff))
    expect(d.next()).toBeUndefined()
    for (let i = 0; i < 4; i++) {
      d.push(new Uint8Array(1 << 16))
      expect(d.next()).toBeUndefined()
      expect(d.pending).toBe(0)
    }
  })

  it("reports a wrong magic as malformed and ignores anything after it", () => {
    const d = new ClientDecoder()
    d.push(concat([FIXED, new Uint8Array(16)]))
    expect(d.next()?.kind).toBe("clientFlags")
    expect(d.next()).toEqual({ kind: "malformed", reason: "option without the IHAVEOPT magic" })
    d.push(go())
    expect(d.next()).toBeUndefined()
  })

  it("turns a 64-bit offset beyond 2^53 into Infinity (always out of range)", () => {
    const d = new ClientDecoder()
    d.enterTransmission()
    const r = request(Command.READ, 0, 1)
    new DataView(r.buffer).setUint32(16, 0xffffffff)
    d.push(r)
    const m = d.next()
    expect(m?.kind === "request" && m.request.offset).toBe(Infinity)
  })
})

describe("option haggling", () => {
  it("greets with fixed newstyle and no-zeroes, answers LIST, INFO and GO, then serves", () => {
    const { messages, end } = session([
      FIXED,
      option(Option.LIST),
      option(Option.INFO, goData("disk", [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE])),
      go("nope"),
      go("disk")
    ])
    expect(messages[0]).toEqual({ kind: "greeting", flags: 3 })
    const r = replies(messages) as Extract<ServerMessage, { kind: "optionReply" }>[]
    expect(r.map((m) => [m.option, m.type])).toEqual([
      [Option.LIST, Reply.SERVER],
      [Option.LIST, Reply.ACK],
      [Option.INFO, Reply.INFO],
      [Option.INFO, Reply.INFO],
      [Option.INFO, Reply.INFO],
      [Option.INFO, Reply.INFO],
      [Option.INFO, Reply.ACK],
      [Option.GO, Reply.ERR_UNKNOWN],
      [Option.GO, Reply.INFO],
      [Option.GO, Reply.ACK]
    ])
    expect(new TextDecoder().decode(r[0]!.data.subarray(4))).toBe("disktest")
    expect(Array.from(r[4]!.data)).toEqual([0, 3, 0, 0, 0, 1, 0, 0, 16, 0, 2, 0, 0, 0])
    const exportInfo = new DataView(r[5]!.data.buffer)
    expect(Number(exportInfo.getBigUint64(2))).toBe(4 * MiB)
    const flags = exportInfo.getUint16(10)
    expect(flags & TransmissionFlag.SEND_DF).toBe(0) // no structured replies negotiated
    expect(flags & TransmissionFlag.SEND_WRITE_ZEROES).not.toBe(0)
    expect(new TextDecoder().decode(r[7]!.data)).toBe("export 'nope' not present")
    expect(end.negotiated).toBe(true)
  })

  it("NBD_OPT_EXPORT_NAME replies with size and flags (no padding after NO_ZEROES); an unknown name drops the connection", () => {
    const ok = session([FIXED, option(Option.EXPORT_NAME, new TextEncoder().encode("disk"))], config(), { exportNameReply: true })
    expect(ok.messages[1]).toMatchObject({ kind: "exportName", size: 4 * MiB })
    const padded = scriptedTransport([u32(1), option(Option.EXPORT_NAME, new TextEncoder().encode("disk"))])
    Effect.runSync(serveConnection(padded, config()))
    expect(padded.output().length).toBe(18 + 8 + 2 + 124)
    const unknown = session([FIXED, option(Option.EXPORT_NAME, new TextEncoder().encode("x"))])
    expect(unknown).toMatchObject({ end: { negotiated: false }, closed: true, messages: [{ kind: "greeting" }] })
  })

  it("meta contexts need structured replies; LIST and SET select base:allocation (and qemu:allocation-depth when offered)", () => {
    const c = config()
    const depth: ServerConfig = { ...c, exports: [{ ...c.exports[0]!, allocationDepth: true }] }
    const { messages } = session(
      [
        FIXED,
        option(Option.SET_META_CONTEXT, metaData("disk", ["base:allocation"])),
        structured,
        structured,
        option(Option.LIST_META_CONTEXT, metaData("disk", [])),
        option(Option.LIST_META_CONTEXT, metaData("disk", ["qemu:"])),
        option(Option.SET_META_CONTEXT, metaData("other", ["base:allocation"])),
        option(Option.SET_META_CONTEXT, concat([metaData("disk", ["base:allocation"]), new Uint8Array(1)])),
        option(Option.SET_META_CONTEXT, metaData("disk", ["base:allocation", "x-foo:bar", "qemu:allocation-depth"])),
        option(99),
        option(Option.STARTTLS),
        option(Option.ABORT)
      ],
      { ...depth, image: c.image }
    )
    const r = replies(messages) as Extract<ServerMessage, { kind: "optionReply" }>[]
    const names = (m: { data: Uint8Array }) => `${new DataView(m.data.buffer).getUint32(0)}:${new TextDecoder().decode(m.data.subarray(4))}`
    expect(r.map((m) => (m.type === Reply.META_CONTEXT ? names(m) : m.type))).toEqual([
      Reply.ERR_INVALID,
      Reply.ACK,
      Reply.ERR_INVALID,
      "0:base:allocation",
      "0:qemu:allocation-depth",
      Reply.ACK,
      "0:qemu:allocation-depth",
      Reply.ACK,
      Reply.ERR_UNKNOWN,
      Reply.ERR_INVALID,
      "0:base:allocation",
      "1:qemu:allocation-depth",
      Reply.ACK,
      Reply.ERR_UNSUP,
      Reply.ERR_POLICY,
      Reply.ACK
    ])
  })

  it("drops the connection for unknown client flags, and for options other than EXPORT_NAME without fixed newstyle", () => {
    expect(session([u32(4), go()]).messages).toHaveLength(1)
    expect(session([u32(0), go()]).messages).toHaveLength(1)
  })

  it("answers an oversized option with ERR_TOO_BIG and goes on", () => {
    const { messages } = session([FIXED, option(Option.INFO, new Uint8Array(70_000)), go()])
    expect(replies(messages).map((m) => m.kind === "optionReply" && m.type)).toEqual([Reply.ERR_TOO_BIG, Reply.INFO, Reply.ACK])
  })
})

describe("transmission", () => {
  const open = [FIXED, structured, option(Option.SET_META_CONTEXT, metaData("disk", ["base:allocation"])), go()]
  const chunks = (ms: ServerMessage[]) => ms.filter((m): m is Extract<ServerMessage, { kind: "chunk" }> => m.kind === "chunk")
  const errorOf = (m: { payload: Uint8Array }) => new DataView(m.payload.buffer).getUint32(0)

  it("writes, reads back with holes, reports block status, flushes for FUA and FLUSH", () => {
    const data = new Uint8Array(8192).fill(7)
    const { messages, image } = session([
      ...open,
      request(Command.WRITE, 4096, 8192, { payload: data, flags: CommandFlag.FUA, handle: 1 }),
      request(Command.READ, 0, 128 * 1024, { handle: 2 }),
      request(Command.READ, 0, 16384, { handle: 3 }),
      request(Command.BLOCK_STATUS, 0, 4 * MiB, { handle: 4 }),
      request(Command.BLOCK_STATUS, 0, 4 * MiB, { handle: 5, flags: CommandFlag.REQ_ONE }),
      request(Command.FLUSH, 0, 0, { handle: 6 }),
      request(Command.READ, 0, 128 * 1024, { handle: 7, flags: CommandFlag.DF }),
      request(Command.DISC, 0, 0)
    ])
    expect(image.bytes.subarray(4096, 12288).every((b) => b === 7)).toBe(true)
    expect(image.flushes).toBe(2)
    const byHandle = (h: number) => chunks(messages).filter((m) => m.handle === h)
    expect(byHandle(1).map((m) => [m.type, m.flags])).toEqual([[ChunkType.NONE, 1]])
    expect(byHandle(2).map((m) => m.type)).toEqual([ChunkType.OFFSET_HOLE, ChunkType.OFFSET_DATA, ChunkType.OFFSET_HOLE])
    expect(byHandle(2).at(-1)!.flags).toBe(1)
    // Short reads go in one data chunk (a block-status lookup would cost more than the zeros it spares).
    expect(byHandle(3).map((m) => [m.type, m.payload.length])).toEqual([[ChunkType.OFFSET_DATA, 8 + 16384]])
    const extents = (m: { payload: Uint8Array }) => {
      const v = new DataView(m.payload.buffer)
      return Array.from({ length: (m.payload.length - 4) / 8 }, (_, i) => [v.getUint32(4 + 8 * i), v.getUint32(8 + 8 * i)])
    }
    expect(extents(byHandle(4)[0]!)).toEqual([[4096, 3], [8192, 0], [4 * MiB - 12288, 3]])
    expect(extents(byHandle(5)[0]!)).toEqual([[4096, 3]])
    expect(byHandle(6).map((m) => m.type)).toEqual([ChunkType.NONE])
    expect(byHandle(7).map((m) => [m.type, m.flags, m.payload.length])).toEqual([[ChunkType.OFFSET_DATA, 1, 8 + 128 * 1024]])
  })

  it("refuses bad requests with the protocol's error values and keeps serving", () => {
    const { messages, image } = session([
      ...open,
      request(Command.READ, 4 * MiB - 1, 2, { handle: 1 }),
      request(Command.WRITE, 4 * MiB - 1, 2, { handle: 2, payload: new Uint8Array(2) }),
      request(Command.TRIM, 4 * MiB, 1, { handle: 3 }),
      request(Command.READ, 0, 33 * MiB, { handle: 4 }),
      request(Command.READ, 0, 1, { handle: 5, flags: CommandFlag.REQ_ONE }),
      request(42, 0, 0, { handle: 6 }),
      request(Command.WRITE_ZEROES, 0, 4096, { handle: 7, flags: CommandFlag.FAST_ZERO }),
      request(Command.WRITE, 0, 40 * MiB, { handle: 8, payload: new Uint8Array(40 * MiB) }),
      request(Command.READ, 0, 1, { handle: 9 })
    ])
    const errors = chunks(messages).map((m) => [m.handle, m.type === ChunkType.ERROR ? errorOf(m) : m.type])
    expect(errors).toEqual([
      [1, Errno.EINVAL],
      [2, Errno.ENOSPC],
      [3, Errno.EINVAL],
      [4, Errno.EINVAL],
      [5, Errno.EINVAL],
      [6, Errno.EINVAL],
      [7, Errno.ENOTSUP],
      [8, Errno.EINVAL],
      [9, ChunkType.OFFSET_DATA]
    ])
    expect(image.bytes.every((b) => b === 0)).toBe(true)
  })

  it("a read-only export refuses writes with EPERM; simple replies without structured replies", () => {
    const { messages } = session(
      [
        FIXED,
        go(),
        request(Command.WRITE, 0, 4, { handle: 1, payload: new Uint8Array(4) }),
        request(Command.TRIM, 0, 4, { handle: 2 }),
        request(Command.READ, 0, 4, { handle: 3 }),
        request(Command.BLOCK_STATUS, 0, 4, { handle: 4 })
      ],
      config(true),
      { readLengths: [4] }
    )
    expect(messages.filter((m) => m.kind === "simple").map((m) => m.kind === "simple" && [m.handle, m.error, m.data.length])).toEqual([
      [1, Errno.EPERM, 0],
      [2, Errno.EPERM, 0],
      [3, 0, 4],
      [4, Errno.EINVAL, 0]
    ])
  })
})

describe("hostile input", () => {
  const run = (chunks: ReadonlyArray<Uint8Array>) => {
    const transport = scriptedTransport(chunks)
    Effect.runSync(serveConnection(transport, config(false, 256 << 10)))
    return transport.closed
  }

  it("random byte streams never crash or hang a connection, before or after the handshake", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 256 }), { maxLength: 12 }), fc.boolean(), (chunks, handshake) => {
        expect(run(handshake ? [FIXED, structured, go(), ...chunks] : chunks)).toBe(true)
      }),
      { numRuns: 300 }
    )
  })

  it("random requests (valid magic, any type, flags, range) never crash and never touch bytes outside their range", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ type: fc.integer({ min: 0, max: 9 }), flags: fc.integer({ min: 0, max: 0xffff }), offset: fc.integer({ min: 0, max: 300_000 }), length: fc.integer({ min: 0, max: 70_000 }) }), { maxLength: 8 }),
        (requests) => {
          const c = config(false, 256 << 10)
          const stream = requests.map((r) => request(r.type, r.offset, r.length, r.type === Command.WRITE ? { flags: r.flags, payload: new Uint8Array(r.length).fill(1) } : { flags: r.flags }))
          const transport = scriptedTransport([FIXED, structured, go(), ...stream])
          Effect.runSync(serveConnection(transport, c))
          const touched = (at: number) => requests.some((r) => (r.type === Command.WRITE || r.type === Command.WRITE_ZEROES || r.type === Command.TRIM) && at >= r.offset && at < r.offset + r.length)
          for (let at = 0; at < c.image.bytes.length; at += 257) if (c.image.bytes[at] !== 0) expect(touched(at)).toBe(true)
          expect(transport.closed).toBe(true)
        }
      ),
      { numRuns: 200 }
    )
  })
})
