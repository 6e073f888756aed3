/**
 * The client side of the fixed newstyle handshake (proto.md "Newstyle
 * negotiation", "Option haggling", the INFO and structured-reply
 * extensions, "Metadata querying"), in the order QEMU's client speaks it:
 * client flags, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT for the
 * contexts asked for, then NBD_OPT_GO with the export name (asking for the
 * block sizes); a server without NBD_OPT_GO gets NBD_OPT_EXPORT_NAME.
 * Option replies are bounded (`MAX_OPTION_REPLY`) before they are read.
 */
import { Effect } from "effect"
import type { StorageError } from "@qcow2/storage"
import type { Transport } from "../connection.js"
import { Fields } from "../fields.js"
import {
  EXPORT_NAME_PADDING,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  MAX_PAYLOAD,
  NBDMAGIC,
  OLDSTYLE_MAGIC,
  OPTION_REPLY_MAGIC,
  Option,
  Reply
} from "../protocol.js"
import { connectionError } from "./errors.js"
import type { ExactReader, StreamEnded } from "./reader.js"
import * as wire from "./wire.js"

/** Longest option reply this client reads; a longer one ends the connection (replies it understands are at most a few KiB). */
export const MAX_OPTION_REPLY = 64 * 1024

/** What the client asks for. */
export interface HandshakeRequest {
  readonly exportName: string
  /** Metadata contexts to select (each needs structured replies); the server grants those it has. */
  readonly metaContexts: ReadonlyArray<string>
}

/** What the handshake settled for the transmission phase. */
export interface Negotiated {
  readonly size: number
  /** Transmission flags (NBD_FLAG_*). */
  readonly flags: number
  readonly structuredReplies: boolean
  /** Granted metadata contexts: name → id. */
  readonly contexts: ReadonlyMap<string, number>
  /** NBD_INFO_BLOCK_SIZE, or the protocol's defaults (1, 4096, 32 MiB) when the server sent none. */
  readonly minimumBlock: number
  readonly preferredBlock: number
  readonly maximumBlock: number
}

interface OptionReply {
  readonly type: number
  readonly data: Uint8Array
}

/** QEMU's words for an option error reply (nbd/client.c nbd_handle_reply_err). */
const replyErrorText = (type: number, option: number): string => {
  switch (type) {
    case Reply.ERR_UNSUP:
      return `Unsupported option ${option}`
    case Reply.ERR_POLICY:
      return "Denied by server for option " + option
    case Reply.ERR_INVALID:
      return `Invalid parameters for option ${option}`
    case Reply.ERR_PLATFORM:
      return `Server lacks support for option ${option}`
    case Reply.ERR_TLS_REQD:
      return `TLS negotiation required before option ${option}`
    case Reply.ERR_UNKNOWN:
      return "Requested export not available"
    case Reply.ERR_SHUTDOWN:
      return `Server shutting down before option ${option}`
    case Reply.ERR_BLOCK_SIZE_REQD:
      return `Server requires INFO_BLOCK_SIZE for option ${option}`
    case Reply.ERR_TOO_BIG:
      return `Server considers option ${option} too large`
    default:
      return `Unknown error 0x${type.toString(16)} for option ${option}`
  }
}

/** Runs the handshake on a connected transport; fails with a StorageError whose cause says what the server did. */
export const handshake = (transport: Transport, reader: ExactReader, request: HandshakeRequest, location: string): Effect.Effect<Negotiated, StorageError> => {
  const fail = (reason: Parameters<typeof connectionError>[1], message: string) => Effect.fail(connectionError(location, reason, message))
  const ended = (what: string) => (e: StreamEnded) => connectionError(location, "HungUp", `the NBD server closed the connection during ${what} (${e.got} of ${e.wanted} bytes)`)
  const send = (parts: ReadonlyArray<Uint8Array>) => transport.write(parts)

  const readReply = (option: number): Effect.Effect<OptionReply, StorageError> =>
    Effect.gen(function* () {
      const header = yield* Effect.mapError(reader.bytes(20), ended("option haggling"))
      const v = new DataView(header.buffer)
      if (v.getBigUint64(0) !== OPTION_REPLY_MAGIC) return yield* fail("WrongMagic", "the NBD server sent an option reply with a wrong magic")
      if (v.getUint32(8) !== option) return yield* fail("Malformed", `the NBD server answered option ${v.getUint32(8)} where ${option} was asked`)
      const length = v.getUint32(16)
      if (length > MAX_OPTION_REPLY) return yield* fail("Oversize", `the NBD server sent an option reply of ${length} bytes (at most ${MAX_OPTION_REPLY} are read)`)
      const data = yield* Effect.mapError(reader.bytes(length), ended("option haggling"))
      return { type: v.getUint32(12), data }
    })

  /** An error reply's message, with the server's own text as QEMU adds it. */
  const refusal = (reply: OptionReply, option: number) => {
    const text = new Fields(reply.data).rest()
    const message = replyErrorText(reply.type, option) + (text !== undefined && text !== "" ? `\nserver reported: ${text}` : "")
    return connectionError(location, "Refused", message)
  }

  const structuredReply = Effect.gen(function* () {
    yield* send([wire.option(Option.STRUCTURED_REPLY)])
    const reply = yield* readReply(Option.STRUCTURED_REPLY)
    if (reply.type === Reply.ACK) return true
    if ((reply.type & 0x80000000) !== 0) return false
    return yield* fail("Malformed", `the NBD server answered NBD_OPT_STRUCTURED_REPLY with reply type ${reply.type}`)
  })

  const setMetaContexts = Effect.gen(function* () {
    const granted = new Map<string, number>()
    yield* send([wire.option(Option.SET_META_CONTEXT, wire.metaContextData(request.exportName, request.metaContexts))])
    while (true) {
      const reply = yield* readReply(Option.SET_META_CONTEXT)
      if (reply.type === Reply.ACK) return granted
      // A server that cannot select contexts leaves block status unknown (everything reads as data), as QEMU's client does.
      if ((reply.type & 0x80000000) !== 0) return new Map<string, number>()
      const fields = new Fields(reply.data)
      const id = fields.u32()
      const name = fields.rest()
      if (reply.type !== Reply.META_CONTEXT || id === undefined || name === undefined || !request.metaContexts.includes(name)) {
        return yield* fail("Malformed", `the NBD server sent an unexpected meta context reply (type ${reply.type})`)
      }
      granted.set(name, id)
    }
  })

  /** NBD_OPT_GO: the export's size and flags; undefined when the server does not know the option. */
  const go = Effect.gen(function* () {
    yield* send([wire.option(Option.GO, wire.goData(request.exportName, [Info.BLOCK_SIZE]))])
    let exportInfo: { size: number; flags: number } | undefined
    let blocks = { minimumBlock: 1, preferredBlock: 4096, maximumBlock: MAX_PAYLOAD }
    while (true) {
      const reply = yield* readReply(Option.GO)
      if (reply.type === Reply.ERR_UNSUP) return undefined
      if ((reply.type & 0x80000000) !== 0) return yield* Effect.fail(refusal(reply, Option.GO))
      if (reply.type === Reply.ACK) {
        if (exportInfo === undefined) return yield* fail("Malformed", "the NBD server ended NBD_OPT_GO without NBD_INFO_EXPORT")
        return { ...exportInfo, ...blocks }
      }
      if (reply.type !== Reply.INFO) return yield* fail("Malformed", `the NBD server answered NBD_OPT_GO with reply type ${reply.type}`)
      const fields = new Fields(reply.data)
      const info = fields.u16()
      if (info === Info.EXPORT) {
        const size = fields.u64()
        const flags = fields.u16()
        if (flags === undefined || fields.left !== 0) return yield* fail("Malformed", "the NBD server sent a malformed NBD_INFO_EXPORT")
        if (size === undefined) return yield* fail("Unsupported", "the NBD export is larger than 2^53 bytes")
        exportInfo = { size, flags }
      } else if (info === Info.BLOCK_SIZE) {
        const [minimum, preferred, maximum] = [fields.u32(), fields.u32(), fields.u32()]
        if (minimum === undefined || preferred === undefined || maximum === undefined || fields.left !== 0) {
          return yield* fail("Malformed", "the NBD server sent a malformed NBD_INFO_BLOCK_SIZE")
        }
        blocks = { minimumBlock: Math.max(1, minimum), preferredBlock: preferred, maximumBlock: Math.max(1, Math.min(maximum, MAX_PAYLOAD)) }
      } else if (info === undefined) {
        return yield* fail("Malformed", "the NBD server sent an empty NBD_REP_INFO")
      }
      // Other information (name, description) is not needed.
    }
  })

  /** NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes; an unknown export makes the server hang up. */
  const exportName = (noZeroes: boolean) =>
    Effect.gen(function* () {
      yield* send([wire.option(Option.EXPORT_NAME, wire.exportNameData(request.exportName))])
      const reply = yield* Effect.mapError(reader.bytes(10), () => connectionError(location, "Refused", "Requested export not available"))
      const fields = new Fields(reply)
      const size = fields.u64()
      const flags = fields.u16()!
      if (!noZeroes) yield* Effect.mapError(reader.skip(EXPORT_NAME_PADDING), ended("option haggling"))
      if (size === undefined) return yield* fail("Unsupported", "the NBD export is larger than 2^53 bytes")
      return { size, flags, minimumBlock: 1, preferredBlock: 4096, maximumBlock: MAX_PAYLOAD }
    })

  return Effect.gen(function* () {
    const greeting = yield* Effect.mapError(reader.bytes(18), ended("the greeting"))
    const v = new DataView(greeting.buffer)
    if (v.getBigUint64(0) !== NBDMAGIC) return yield* fail("WrongMagic", "not an NBD server (no NBDMAGIC in its greeting)")
    const second = v.getBigUint64(8)
    if (second === OLDSTYLE_MAGIC) return yield* fail("Unsupported", "the NBD server speaks only the oldstyle handshake")
    if (second !== IHAVEOPT) return yield* fail("WrongMagic", "not an NBD server (no IHAVEOPT in its greeting)")
    const serverFlags = v.getUint16(16)
    const fixed = (serverFlags & FLAG_FIXED_NEWSTYLE) !== 0
    const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0
    yield* send([wire.clientFlags((fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0))])
    // Without fixed newstyle no option but NBD_OPT_EXPORT_NAME can be answered.
    if (!fixed) return { ...(yield* exportName(noZeroes)), structuredReplies: false, contexts: new Map<string, number>() }
    const structuredReplies = yield* structuredReply
    const contexts = structuredReplies && request.metaContexts.length > 0 ? yield* setMetaContexts : new Map<string, number>()
    const settled = (yield* go) ?? (yield* exportName(noZeroes))
    return { ...settled, structuredReplies, contexts }
  })
}
