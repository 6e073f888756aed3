/**
 * Option haggling of the fixed newstyle handshake (proto.md "Option
 * types", the INFO extension, "Metadata querying"). Pure: each client
 * option becomes the replies to send and what happens next (go on, enter
 * transmission with an export, or drop the connection). No I/O.
 */
import type { Image } from "@qcow2/image"
import * as encode from "./encode.js"
import { Fields } from "./fields.js"
import {
  BASE_ALLOCATION,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  Info,
  MAX_PAYLOAD,
  MAX_STRING,
  Option,
  QEMU_ALLOCATION_DEPTH,
  Reply,
  TransmissionFlag
} from "./protocol.js"

/** One export: a name clients ask for and the image behind it. */
export interface NbdExport {
  readonly name: string
  /** Shown by NBD_INFO_DESCRIPTION (qemu-nbd -D). */
  readonly description?: string
  readonly image: Image
  /** Refuse writes (NBD_FLAG_READ_ONLY); forced when the image itself is read-only. */
  readonly readOnly?: boolean
  /** Also offer the `qemu:allocation-depth` metadata context (qemu-nbd -A). */
  readonly allocationDepth?: boolean
  /** Flush after every write, as if each carried FUA (qemu-nbd --cache=writethrough / directsync). */
  readonly writethrough?: boolean
}

/** What a server offers: its exports and connection-wide settings. */
export interface ServerConfig {
  readonly exports: ReadonlyArray<NbdExport>
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN. Safe here whenever it is set: every
   * connection shares one open image (one engine, one cache), so a flush or
   * FUA on one connection covers writes completed on all of them. qemu-nbd
   * sets it when more than one client may connect (`-e` other than 1).
   */
  readonly multiConn: boolean
}

/** A metadata context selected for the transmission phase. */
export type MetaContext = { readonly id: number; readonly name: typeof BASE_ALLOCATION | typeof QEMU_ALLOCATION_DEPTH }

/** What the transmission phase works with, fixed by the handshake. */
export interface Session {
  readonly export: NbdExport
  readonly readOnly: boolean
  readonly flags: number
  readonly structuredReplies: boolean
  readonly contexts: ReadonlyArray<MetaContext>
}

/** What the connection does after an option: read more options, close, or start transmission with the negotiated session. */
export type Next =
  | { readonly kind: "continue" }
  | { readonly kind: "close" }
  | { readonly kind: "transmission"; readonly session: Session }

/** The server's answer to one option: the replies to send, then what comes next. */
export interface Outcome {
  readonly replies: ReadonlyArray<Uint8Array>
  readonly next: Next
}

const CONTINUE: Next = { kind: "continue" }
const CLOSE: Next = { kind: "close" }
const decoder = new TextDecoder()

/** Flags that make the export read-only: the export's own, or a read-only image. */
const isReadOnly = (e: NbdExport): boolean => e.readOnly === true || e.image.readOnly

/** Contexts an export offers, with the ids this server gives them. */
const offered = (e: NbdExport): ReadonlyArray<MetaContext> =>
  e.allocationDepth === true ? [{ id: 0, name: BASE_ALLOCATION }, { id: 1, name: QEMU_ALLOCATION_DEPTH }] : [{ id: 0, name: BASE_ALLOCATION }]

/**
 * Transmission flags, as qemu-nbd sets them: flush, FUA, cache always; DF
 * with structured replies; trim, write-zeroes and fast-zero only when
 * writable; multi-conn as configured.
 */
export const transmissionFlags = (e: NbdExport, structured: boolean, multiConn: boolean): number => {
  let flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_CACHE
  if (structured) flags |= TransmissionFlag.SEND_DF
  if (isReadOnly(e)) flags |= TransmissionFlag.READ_ONLY
  else flags |= TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FAST_ZERO
  if (multiConn) flags |= TransmissionFlag.CAN_MULTI_CONN
  return flags
}

/** The per-connection negotiation state and its option handler. */
export class Negotiation {
  private fixed = false
  private noZeroes = false
  private structured = false
  /** Contexts chosen by NBD_OPT_SET_META_CONTEXT, for the export it named. */
  private selected: { readonly exportName: string; readonly contexts: ReadonlyArray<MetaContext> } | undefined

  constructor(private readonly config: ServerConfig) {}

  /** The client flags: unknown bits drop the connection (proto.md "Client flags"). */
  clientFlags(flags: number): Next {
    if ((flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) return CLOSE
    this.fixed = (flags & FLAG_C_FIXED_NEWSTYLE) !== 0
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0
    return CONTINUE
  }

  /** An option whose data was too long to buffer. */
  oversized(option: number): Outcome {
    // NBD_OPT_EXPORT_NAME cannot be answered with an error: drop the connection.
    if (option === Option.EXPORT_NAME || !this.fixed) return { replies: [], next: CLOSE }
    return { replies: [encode.optionError(option, Reply.ERR_TOO_BIG, "option data too long")], next: CONTINUE }
  }

  /** One option with its data. */
  option(option: number, data: Uint8Array): Outcome {
    if (option === Option.EXPORT_NAME) return this.exportName(data)
    // Without fixed newstyle, replies to other options cannot be framed (proto.md "Newstyle negotiation").
    if (!this.fixed) return { replies: [], next: CLOSE }
    const error = (type: number, message: string): Outcome => ({ replies: [encode.optionError(option, type, message)], next: CONTINUE })
    switch (option) {
      case Option.ABORT:
        return { replies: [encode.optionReply(option, Reply.ACK)], next: CLOSE }
      case Option.LIST: {
        if (data.length !== 0) return error(Reply.ERR_INVALID, "NBD_OPT_LIST takes no data")
        const replies = this.config.exports.map((e) => encode.serverReply(option, e.name, e.description))
        return { replies: [...replies, encode.optionReply(option, Reply.ACK)], next: CONTINUE }
      }
      case Option.STARTTLS:
        return error(Reply.ERR_POLICY, "TLS not configured")
      case Option.INFO:
      case Option.GO:
        return this.info(option, data)
      case Option.STRUCTURED_REPLY: {
        if (data.length !== 0) return error(Reply.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
        if (this.structured) return error(Reply.ERR_INVALID, "structured reply already negotiated")
        this.structured = true
        return { replies: [encode.optionReply(option, Reply.ACK)], next: CONTINUE }
      }
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.metaContext(option, data)
      default:
        return error(Reply.ERR_UNSUP, `option ${option} not supported`)
    }
  }

  private find(name: string): NbdExport | undefined {
    return this.config.exports.find((e) => e.name === name)
  }

  private session(e: NbdExport): Session {
    const contexts = this.selected !== undefined && this.selected.exportName === e.name ? this.selected.contexts : []
    return {
      export: e,
      readOnly: isReadOnly(e),
      flags: transmissionFlags(e, this.structured, this.config.multiConn),
      structuredReplies: this.structured,
      contexts
    }
  }

  /** NBD_OPT_EXPORT_NAME: enter transmission, or drop the connection for an unknown name. */
  private exportName(data: Uint8Array): Outcome {
    const name = data.length <= MAX_STRING ? decoder.decode(data) : undefined
    const e = name !== undefined ? this.find(name) : undefined
    if (e === undefined) return { replies: [], next: CLOSE }
    const session = this.session(e)
    return { replies: [encode.exportNameReply(e.image.virtualSize, session.flags, this.noZeroes)], next: { kind: "transmission", session } }
  }

  /** NBD_OPT_INFO / NBD_OPT_GO: the export's size and flags, its name, description and block sizes when asked. */
  private info(option: number, data: Uint8Array): Outcome {
    const fields = new Fields(data)
    const name = fields.prefixedString()
    const count = fields.u16()
    if (name === undefined || count === undefined || fields.left !== 2 * count) {
      return { replies: [encode.optionError(option, Reply.ERR_INVALID, "malformed NBD_OPT_INFO/GO request")], next: CONTINUE }
    }
    const requested = new Set<number>()
    for (let i = 0; i < count; i++) requested.add(fields.u16()!)
    const e = this.find(name)
    if (e === undefined) return { replies: [encode.optionError(option, Reply.ERR_UNKNOWN, `export '${name}' not present`)], next: CONTINUE }
    const session = this.session(e)
    const replies: Uint8Array[] = []
    if (requested.has(Info.NAME)) replies.push(encode.infoString(option, Info.NAME, e.name))
    if (requested.has(Info.DESCRIPTION) && e.description !== undefined) replies.push(encode.infoString(option, Info.DESCRIPTION, e.description))
    // Any alignment works (the image reads and writes at byte granularity); 4 KiB avoids read-modify-write.
    if (requested.has(Info.BLOCK_SIZE)) replies.push(encode.infoBlockSize(option, 1, 4096, MAX_PAYLOAD))
    replies.push(encode.infoExport(option, e.image.virtualSize, session.flags))
    replies.push(encode.optionReply(option, Reply.ACK))
    return { replies, next: option === Option.GO ? { kind: "transmission", session } : CONTINUE }
  }

  /**
   * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then
   * queries. A namespace alone ("base:", "qemu:") lists all its contexts;
   * names this server does not know select nothing.
   */
  private metaContext(option: number, data: Uint8Array): Outcome {
    const error = (type: number, message: string): Outcome => ({ replies: [encode.optionError(option, type, message)], next: CONTINUE })
    if (!this.structured) return error(Reply.ERR_INVALID, "structured replies not negotiated")
    const fields = new Fields(data)
    const name = fields.prefixedString()
    const count = fields.u32()
    if (name === undefined || count === undefined || count > fields.left / 4) return error(Reply.ERR_INVALID, "malformed meta context request")
    const queries: string[] = []
    for (let i = 0; i < count; i++) {
      const query = fields.prefixedString()
      if (query === undefined) return error(Reply.ERR_INVALID, "malformed meta context query")
      queries.push(query)
    }
    if (fields.left !== 0) return error(Reply.ERR_INVALID, "trailing data in meta context request")
    const e = this.find(name)
    if (e === undefined) return error(Reply.ERR_UNKNOWN, `export '${name}' not present`)
    const list = option === Option.LIST_META_CONTEXT
    const available = offered(e)
    const matches = (context: MetaContext): boolean =>
      (list && queries.length === 0) || queries.some((q) => q === context.name || (list && q.endsWith(":") && context.name.startsWith(q)))
    const chosen = available.filter(matches)
    if (!list) this.selected = { exportName: e.name, contexts: chosen }
    // Listed contexts carry id 0 (proto.md: reserved in NBD_OPT_LIST_META_CONTEXT replies).
    const replies = chosen.map((c) => encode.metaContextReply(option, list ? 0 : c.id, c.name))
    return { replies: [...replies, encode.optionReply(option, Reply.ACK)], next: CONTINUE }
  }
}
