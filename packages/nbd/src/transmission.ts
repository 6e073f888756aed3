/**
 * The transmission phase: what a request may do (a pure check giving the
 * protocol's error value), and doing it on the export's image (one Effect
 * per request, whose result is the reply to send: simple or structured,
 * as negotiated).
 */
import { Effect } from "effect"
import type { BlockStatus, ImageError } from "@qcow2/image"
import type { Request } from "./decoder.js"
import * as encode from "./encode.js"
import type { MetaContext, Session } from "./negotiate.js"
import { BASE_ALLOCATION, Command, CommandFlag, Errno, MAX_PAYLOAD, STATE_HOLE, STATE_ZERO, TransmissionFlag } from "./protocol.js"

/** A request refused before it touches the image. */
export interface Refusal {
  readonly errno: Errno
  readonly message: string
}

/** Flags each command accepts (FUA on every command when SEND_FUA is set, proto.md "Command flags"). */
const allowedFlags = (type: number, session: Session): number => {
  let allowed = CommandFlag.FUA
  if (type === Command.READ && (session.flags & TransmissionFlag.SEND_DF) !== 0) allowed |= CommandFlag.DF
  if (type === Command.WRITE_ZEROES) allowed |= CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO
  if (type === Command.BLOCK_STATUS) allowed |= CommandFlag.REQ_ONE
  return allowed
}

const writes = (type: number): boolean => type === Command.WRITE || type === Command.WRITE_ZEROES || type === Command.TRIM

/**
 * Checks a request against the export and the negotiation, in qemu-nbd's
 * order: unknown command or flag (EINVAL), a write to a read-only export
 * (EPERM), a read or write larger than the advertised maximum (EINVAL), a
 * range past the end (ENOSPC for writes and write-zeroes, EINVAL
 * otherwise), block status without a selected context (EINVAL).
 */
export const checkRequest = (request: Request, session: Session): Refusal | undefined => {
  const { type, flags, offset, length } = request
  if (type > Command.BLOCK_STATUS || type === Command.DISC) return { errno: Errno.EINVAL, message: `unsupported command ${type}` }
  if ((flags & ~allowedFlags(type, session)) !== 0) return { errno: Errno.EINVAL, message: `unsupported flags 0x${flags.toString(16)} for command ${type}` }
  if (session.readOnly && writes(type)) return { errno: Errno.EPERM, message: "export is read-only" }
  if ((type === Command.READ || type === Command.WRITE) && length > MAX_PAYLOAD) {
    return { errno: Errno.EINVAL, message: `length ${length} is larger than the maximum ${MAX_PAYLOAD}` }
  }
  if (type === Command.FLUSH) return undefined
  const size = session.export.image.virtualSize
  if (offset > size || length > size - offset) {
    return { errno: writes(type) && type !== Command.TRIM ? Errno.ENOSPC : Errno.EINVAL, message: `operation past the end of the export (${size} bytes)` }
  }
  if (type === Command.BLOCK_STATUS) {
    if (session.contexts.length === 0) return { errno: Errno.EINVAL, message: "no metadata context was negotiated" }
    if (length === 0) return { errno: Errno.EINVAL, message: "block status of an empty range" }
  }
  return undefined
}

/** The NBD error value of an image failure (proto.md "Error values": EPERM, ENOSPC, EINVAL, EIO). */
export const errnoOf = (error: ImageError): Errno => {
  switch (error.errno) {
    case "ENOSPC":
      return Errno.ENOSPC
    case "EINVAL":
    // qemu-nbd: an errno NBD has no code for (an image out of service after a fatal corruption event) goes out as EINVAL.
    case "ENOMEDIUM":
      return Errno.EINVAL
    case "ENOTSUP":
      return Errno.ENOTSUP
  }
  switch (error.reason) {
    case "ReadOnly":
      return Errno.EPERM
    case "NoSpace":
      return Errno.ENOSPC
    case "InvalidArgument":
      return Errno.EINVAL
    case "NotQcow2":
    case "Corrupt":
    case "Unsupported":
    case "BackingChain":
    case "Decompression":
    case "Compression":
    case "Encryption":
    case "RefcountOverflow":
    case "Storage":
    case "Locked":
      return Errno.EIO
  }
}

/** The reply to a refused or failed request: a structured error chunk, or a simple reply with the error. */
export const errorReply = (request: Request, session: Session, errno: Errno, message: string): ReadonlyArray<Uint8Array> =>
  session.structuredReplies ? [encode.chunkError(request, errno, message)] : [encode.simpleReply(request, errno)]

const success = (request: Request, session: Session): ReadonlyArray<Uint8Array> =>
  session.structuredReplies ? [encode.chunkNone(request)] : [encode.simpleReply(request, 0)]

/**
 * Whether write-zeroes of this range is cheap (NBD_CMD_FLAG_FAST_ZERO):
 * whole clusters of an unencrypted qcow2 image that can hold zero flags or
 * drop clusters (v3, or v2 without a backing file), no external data file.
 * Anything else would write zero bytes, so it fails with ENOTSUP as the
 * flag asks.
 */
export const fastZeroPossible = (session: Session, offset: number, length: number): boolean => {
  const image = session.export.image
  const header = image.header?.header
  if (image.format !== "qcow2" || header === undefined || header.cryptMethod !== 0 || image.dataFile !== undefined) return false
  if (header.version < 3 && image.backing !== undefined) return false
  const end = offset + length
  return offset % image.clusterSize === 0 && (end % image.clusterSize === 0 || end === image.virtualSize)
}

/** Reads this long or longer send zero ranges as holes. */
const SPARSE_READ_MIN = 64 * 1024

/** Most descriptors one block status reply carries per context (fewer than the range needs is allowed). */
const MAX_EXTENTS = 4096

/**
 * Most image block-status calls one request makes. Block status of a raw
 * image reads the data to find zeros (up to 2 MiB a call), so a raw export
 * examines at most 32 MiB per request; qcow2 status comes from metadata.
 * The client asks again for the rest (proto.md allows a shorter answer).
 */
const statusCalls = (session: Session): number => (session.export.image.format === "raw" ? 16 : MAX_EXTENTS)

/** The descriptor flags of one status in a context. */
const statusFlags = (context: MetaContext, status: BlockStatus): number =>
  context.name === BASE_ALLOCATION ? (status.data ? 0 : STATE_HOLE) | (status.zero ? STATE_ZERO : 0) : status.present ? status.depth + 1 : 0

/**
 * Runs one checked request on the image and gives the reply to send. Image
 * failures become error replies; the effect itself does not fail.
 */
export const execute = (request: Request, payload: Uint8Array | undefined, session: Session): Effect.Effect<ReadonlyArray<Uint8Array>> => {
  const image = session.export.image
  const fua = ((request.flags & CommandFlag.FUA) !== 0 || session.export.writethrough === true) && !session.readOnly
  const thenFlush = (effect: Effect.Effect<void, ImageError>) => (fua ? Effect.andThen(effect, image.flush()) : effect)
  let work: Effect.Effect<ReadonlyArray<Uint8Array>, ImageError>
  switch (request.type) {
    case Command.READ:
      work = read(request, session)
      break
    case Command.WRITE:
      work = Effect.as(thenFlush(image.write(request.offset, payload!)), success(request, session))
      break
    case Command.WRITE_ZEROES: {
      if ((request.flags & CommandFlag.FAST_ZERO) !== 0 && !fastZeroPossible(session, request.offset, request.length)) {
        return Effect.succeed(errorReply(request, session, Errno.ENOTSUP, "zeroing this range is not fast"))
      }
      const unmap = (request.flags & CommandFlag.NO_HOLE) === 0
      work = Effect.as(thenFlush(image.writeZeroes(request.offset, request.length, { unmap })), success(request, session))
      break
    }
    case Command.TRIM:
      work = Effect.as(thenFlush(image.discard(request.offset, request.length)), success(request, session))
      break
    case Command.FLUSH:
      work = Effect.as(image.flush(), success(request, session))
      break
    case Command.CACHE:
      work = Effect.succeed(success(request, session))
      break
    default:
      work = blockStatus(request, session)
  }
  return Effect.catch(work, (error) => Effect.succeed(errorReply(request, session, errnoOf(error), error.message)))
}

/**
 * NBD_CMD_READ. Simple replies carry the bytes after the header. Structured
 * replies send ranges that read as zeros as holes (NBD_REPLY_TYPE_OFFSET_HOLE)
 * and the rest as data chunks, as QEMU's server does for sparse images.
 */
const read = (request: Request, session: Session): Effect.Effect<ReadonlyArray<Uint8Array>, ImageError> =>
  Effect.gen(function* () {
    const image = session.export.image
    const { offset, length } = request
    const data = new Uint8Array(length)
    if (!session.structuredReplies) {
      yield* image.read(offset, data)
      return [encode.simpleReply(request, 0), data]
    }
    if (length === 0) return [encode.chunkNone(request)]
    // One chunk when asked (DF); for raw images, whose block status would read the data a second time to find zeros;
    // and for small reads, where a block-status lookup costs more than the zeros it could spare.
    if ((request.flags & CommandFlag.DF) !== 0 || image.format === "raw" || length < SPARSE_READ_MIN) {
      yield* image.read(offset, data)
      return [encode.chunkDataHeader(request, true, offset, length), data]
    }
    const parts: Uint8Array[] = []
    let at = 0
    while (at < length) {
      const status = yield* image.blockStatus(offset + at, length - at)
      const run = Math.max(1, Math.min(status.length, length - at))
      const done = at + run === length
      if (status.zero) {
        parts.push(encode.chunkHole(request, done, offset + at, run))
      } else {
        const slice = data.subarray(at, at + run)
        yield* image.read(offset + at, slice)
        parts.push(encode.chunkDataHeader(request, done, offset + at, run), slice)
      }
      at += run
    }
    return parts
  })

/** NBD_CMD_BLOCK_STATUS: one chunk per selected context, adjacent equal descriptors merged. */
const blockStatus = (request: Request, session: Session): Effect.Effect<ReadonlyArray<Uint8Array>, ImageError> =>
  Effect.gen(function* () {
    const image = session.export.image
    const limit = (request.flags & CommandFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS
    const extents = session.contexts.map(() => [] as { length: number; flags: number }[])
    let at = 0
    for (let calls = statusCalls(session); at < request.length && calls > 0; calls--) {
      const status = yield* image.blockStatus(request.offset + at, request.length - at)
      const run = Math.max(1, Math.min(status.length, request.length - at))
      let full = false
      session.contexts.forEach((context, i) => {
        const list = extents[i]!
        const flags = statusFlags(context, status)
        const last = list[list.length - 1]
        if (last !== undefined && last.flags === flags) last.length += run
        else if (list.length < limit) list.push({ length: run, flags })
        else full = true
      })
      if (full) break
      at += run
    }
    return extents.map((list, i) => encode.chunkBlockStatus(request, i === extents.length - 1, session.contexts[i]!.id, list))
  })
