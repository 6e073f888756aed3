/**
 * Encoders of what the server sends (proto.md): the greeting, option
 * replies, the NBD_OPT_EXPORT_NAME reply, simple replies and structured
 * reply chunks. Pure functions returning fresh byte arrays; a chunk's
 * payload that is already in memory (read data) is returned as a separate
 * part so it is never copied.
 */
import {
  ChunkType,
  EXPORT_NAME_PADDING,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REPLY_FLAG_DONE,
  Reply,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC
} from "./protocol.js"
import type { Request } from "./decoder.js"

const utf8 = new TextEncoder()

/** UTF-8 bytes of `text`, cut to at most `max` bytes (on a character boundary). */
export const encodeString = (text: string, max: number): Uint8Array => {
  const bytes = utf8.encode(text)
  if (bytes.length <= max) return bytes
  let end = max
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--
  return bytes.subarray(0, end)
}

/** "NBDMAGIC" "IHAVEOPT" and the handshake flags: fixed newstyle, no zeroes. */
export const greeting = (): Uint8Array => {
  const out = new Uint8Array(18)
  const v = new DataView(out.buffer)
  v.setBigUint64(0, NBDMAGIC)
  v.setBigUint64(8, IHAVEOPT)
  v.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
  return out
}

/** An option reply: magic, option, reply type, length, data. */
export const optionReply = (option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array => {
  const out = new Uint8Array(20 + data.length)
  const v = new DataView(out.buffer)
  v.setBigUint64(0, OPTION_REPLY_MAGIC)
  v.setUint32(8, option)
  v.setUint32(12, type)
  v.setUint32(16, data.length)
  out.set(data, 20)
  return out
}

/** An error option reply with a message for a human (proto.md: error replies MAY carry a string). */
export const optionError = (option: number, type: number, message: string): Uint8Array => optionReply(option, type, encodeString(message, 4096))

/** NBD_REP_SERVER: one export of an NBD_OPT_LIST answer (name length, name, then the description). */
export const serverReply = (option: number, name: string, description: string | undefined): Uint8Array => {
  const nameBytes = encodeString(name, 4096)
  const text = description !== undefined ? encodeString(description, 4096) : new Uint8Array(0)
  const data = new Uint8Array(4 + nameBytes.length + text.length)
  new DataView(data.buffer).setUint32(0, nameBytes.length)
  data.set(nameBytes, 4)
  data.set(text, 4 + nameBytes.length)
  return optionReply(option, Reply.SERVER, data)
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags. */
export const infoExport = (option: number, size: number, flags: number): Uint8Array => {
  const data = new Uint8Array(12)
  const v = new DataView(data.buffer)
  v.setUint16(0, Info.EXPORT)
  v.setBigUint64(2, BigInt(size))
  v.setUint16(10, flags)
  return optionReply(option, Reply.INFO, data)
}

/** NBD_REP_INFO / NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a string. */
export const infoString = (option: number, type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Uint8Array => {
  const bytes = encodeString(text, 4096)
  const data = new Uint8Array(2 + bytes.length)
  new DataView(data.buffer).setUint16(0, type)
  data.set(bytes, 2)
  return optionReply(option, Reply.INFO, data)
}

/** NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block size. */
export const infoBlockSize = (option: number, minimum: number, preferred: number, maximum: number): Uint8Array => {
  const data = new Uint8Array(14)
  const v = new DataView(data.buffer)
  v.setUint16(0, Info.BLOCK_SIZE)
  v.setUint32(2, minimum)
  v.setUint32(6, preferred)
  v.setUint32(10, maximum)
  return optionReply(option, Reply.INFO, data)
}

/** NBD_REP_META_CONTEXT: context id and name. */
export const metaContextReply = (option: number, id: number, name: string): Uint8Array => {
  const bytes = encodeString(name, 4096)
  const data = new Uint8Array(4 + bytes.length)
  new DataView(data.buffer).setUint32(0, id)
  data.set(bytes, 4)
  return optionReply(option, Reply.META_CONTEXT, data)
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES was agreed. */
export const exportNameReply = (size: number, flags: number, noZeroes: boolean): Uint8Array => {
  const out = new Uint8Array(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING))
  const v = new DataView(out.buffer)
  v.setBigUint64(0, BigInt(size))
  v.setUint16(8, flags)
  return out
}

/** A simple reply header: magic, error, handle (read data, if any, follows as its own part). */
export const simpleReply = (request: Request, error: number): Uint8Array => {
  const out = new Uint8Array(16)
  const v = new DataView(out.buffer)
  v.setUint32(0, SIMPLE_REPLY_MAGIC)
  v.setUint32(4, error)
  v.setUint32(8, request.handleHigh)
  v.setUint32(12, request.handleLow)
  return out
}

/** A structured chunk header (20 bytes) followed by `headerExtra` bytes of payload written by the caller. */
const chunk = (request: Request, done: boolean, type: number, payloadLength: number, headerExtra: number): { out: Uint8Array; view: DataView } => {
  const out = new Uint8Array(20 + headerExtra)
  const view = new DataView(out.buffer)
  view.setUint32(0, STRUCTURED_REPLY_MAGIC)
  view.setUint16(4, done ? REPLY_FLAG_DONE : 0)
  view.setUint16(6, type)
  view.setUint32(8, request.handleHigh)
  view.setUint32(12, request.handleLow)
  view.setUint32(16, payloadLength)
  return { out, view }
}

/** NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: the request succeeded. */
export const chunkNone = (request: Request): Uint8Array => chunk(request, true, ChunkType.NONE, 0, 0).out

/** Header of NBD_REPLY_TYPE_OFFSET_DATA (offset included); `length` data bytes follow as their own part. */
export const chunkDataHeader = (request: Request, done: boolean, offset: number, length: number): Uint8Array => {
  const { out, view } = chunk(request, done, ChunkType.OFFSET_DATA, 8 + length, 8)
  view.setBigUint64(20, BigInt(offset))
  return out
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: `length` bytes at `offset` read as zeros. */
export const chunkHole = (request: Request, done: boolean, offset: number, length: number): Uint8Array => {
  const { out, view } = chunk(request, done, ChunkType.OFFSET_HOLE, 12, 12)
  view.setBigUint64(20, BigInt(offset))
  view.setUint32(28, length)
  return out
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: context id, then (length, flags) descriptors. */
export const chunkBlockStatus = (request: Request, done: boolean, contextId: number, extents: ReadonlyArray<{ readonly length: number; readonly flags: number }>): Uint8Array => {
  const payload = 4 + 8 * extents.length
  const { out, view } = chunk(request, done, ChunkType.BLOCK_STATUS, payload, payload)
  view.setUint32(20, contextId)
  extents.forEach((e, i) => {
    view.setUint32(24 + 8 * i, e.length)
    view.setUint32(28 + 8 * i, e.flags)
  })
  return out
}

/** NBD_REPLY_TYPE_ERROR (always the final chunk here): error value and a message for a human. */
export const chunkError = (request: Request, error: number, message: string): Uint8Array => {
  const text = encodeString(message, 1024)
  const payload = 6 + text.length
  const { out, view } = chunk(request, true, ChunkType.ERROR, payload, payload)
  view.setUint32(20, error)
  view.setUint16(24, text.length)
  out.set(text, 26)
  return out
}
