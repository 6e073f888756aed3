/**
 * Encoders of what an NBD client sends (proto.md "Newstyle negotiation",
 * "Option types", "Request message"): client flags, options with their
 * data, and request headers. Pure functions returning fresh byte arrays;
 * a write's payload is sent as its own part, never copied.
 */
import { encodeString } from "../encode.js"
import { IHAVEOPT, MAX_STRING, REQUEST_MAGIC } from "../protocol.js"

/** The client flags (32 bits) that answer the server's handshake flags. */
export const clientFlags = (flags: number): Uint8Array => {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, flags)
  return out
}

/** An option: IHAVEOPT, option number, data length, data. */
export const option = (type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array => {
  const out = new Uint8Array(16 + data.length)
  const v = new DataView(out.buffer)
  v.setBigUint64(0, IHAVEOPT)
  v.setUint32(8, type)
  v.setUint32(12, data.length)
  out.set(data, 16)
  return out
}

/** Concatenates length-prefixed (u32) strings, each cut to the protocol's 4096 bytes. */
const prefixed = (strings: ReadonlyArray<string>): Uint8Array[] =>
  strings.map((text) => {
    const bytes = encodeString(text, MAX_STRING)
    const out = new Uint8Array(4 + bytes.length)
    new DataView(out.buffer).setUint32(0, bytes.length)
    out.set(bytes, 4)
    return out
  })

const join = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const part of parts) {
    out.set(part, at)
    at += part.length
  }
  return out
}

/** Data of NBD_OPT_GO / NBD_OPT_INFO: the export name, then the NBD_INFO_* types asked for (u16 count, u16 each). */
export const goData = (exportName: string, infoTypes: ReadonlyArray<number>): Uint8Array => {
  const types = new Uint8Array(2 + 2 * infoTypes.length)
  const v = new DataView(types.buffer)
  v.setUint16(0, infoTypes.length)
  infoTypes.forEach((type, i) => v.setUint16(2 + 2 * i, type))
  return join([...prefixed([exportName]), types])
}

/** Data of NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT: export name, query count (u32), queries. */
export const metaContextData = (exportName: string, queries: ReadonlyArray<string>): Uint8Array => {
  const count = new Uint8Array(4)
  new DataView(count.buffer).setUint32(0, queries.length)
  const [name, ...rest] = prefixed([exportName, ...queries])
  return join([name!, count, ...rest])
}

/** Data of NBD_OPT_EXPORT_NAME: the name itself, unprefixed. */
export const exportNameData = (exportName: string): Uint8Array => encodeString(exportName, MAX_STRING)

/** A request header (28 bytes): magic, flags, type, handle, offset, length. */
export const request = (type: number, flags: number, handle: number, offset: number, length: number): Uint8Array => {
  const out = new Uint8Array(28)
  const v = new DataView(out.buffer)
  v.setUint32(0, REQUEST_MAGIC)
  v.setUint16(4, flags)
  v.setUint16(6, type)
  v.setUint32(8, Math.floor(handle / 2 ** 32))
  v.setUint32(12, handle >>> 0)
  v.setUint32(16, Math.floor(offset / 2 ** 32))
  v.setUint32(20, offset >>> 0)
  v.setUint32(24, length)
  return out
}
