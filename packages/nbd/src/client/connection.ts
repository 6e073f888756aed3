/**
 * The transmission phase of one client connection (proto.md
 * "Transmission", "Structured replies"): requests go out with a fresh
 * handle each, one reader fiber takes the replies as they come (in any
 * order) and completes the request each belongs to. A read's data goes
 * straight into the caller's buffer.
 *
 * Bounded and fail-safe: at most `MAX_IN_FLIGHT` requests at once; every
 * length the server sends is checked against the request it answers before
 * a byte is read; a reply that breaks the protocol (wrong magic, unknown
 * handle, a chunk outside its request, an oversized length) or a server
 * that hangs up fails every request in flight and every later one with
 * the same error, and closes the connection, so no caller waits forever
 * on a server that has gone.
 */
import { Deferred, Effect, Fiber, Semaphore } from "effect"
import type { Scope } from "effect"
import type { StorageError } from "@qcow2/storage"
import type { Transport } from "../connection.js"
import { ChunkType, Command, REPLY_FLAG_DONE, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from "../protocol.js"
import { connectionError, requestError, type NbdProtocolErrorReason } from "./errors.js"
import type { Negotiated } from "./handshake.js"
import type { ExactReader, StreamEnded } from "./reader.js"
import * as wire from "./wire.js"

/** Requests in flight on one connection at once (QEMU's client allows 16 too). */
export const MAX_IN_FLIGHT = 16
/** Most extents one block-status reply may carry (each 8 bytes): more end the connection. */
export const MAX_EXTENTS = 64 * 1024
/** Error chunks one request may get. */
const MAX_ERROR_CHUNKS = 64
/** Longest error message chunk payload read (error value, length, a 4096-byte message, an offset). */
const MAX_ERROR_PAYLOAD = 6 + 4096 + 8

/** One extent of a metadata context (proto.md "Metadata querying"): its length and the context's flags. */
export interface Extent {
  readonly length: number
  readonly flags: number
}

interface Pending {
  readonly type: number
  readonly name: string
  readonly offset: number
  readonly length: number
  /** Where a read's data goes. */
  readonly into: Uint8Array | undefined
  /** Bytes of a read covered by data and hole chunks so far. */
  covered: number
  /** The context whose extents a block-status request collects. */
  readonly contextId: number | undefined
  extents: Extent[]
  error: StorageError | undefined
  errorChunks: number
  readonly done: Deferred.Deferred<void, StorageError>
}

/** Names of the commands, for messages. */
const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [Command.READ]: "read",
  [Command.WRITE]: "write",
  [Command.FLUSH]: "flush",
  [Command.TRIM]: "trim",
  [Command.WRITE_ZEROES]: "write zeroes",
  [Command.BLOCK_STATUS]: "block status",
  [Command.CACHE]: "cache"
}

/** An NBD connection in its transmission phase. */
export interface NbdConnection {
  readonly negotiated: Negotiated
  /**
   * Sends one request and waits for its reply. `into` receives a read's
   * data; `contextId` names the context a block-status request collects
   * extents of (returned). Lengths must be within the server's limits (the
   * caller splits).
   */
  readonly request: (
    type: number,
    flags: number,
    offset: number,
    length: number,
    options?: { readonly into?: Uint8Array; readonly payload?: Uint8Array; readonly contextId?: number }
  ) => Effect.Effect<ReadonlyArray<Extent>, StorageError>
}

/**
 * Starts the reply reader on a negotiated transport. When the scope
 * closes, the requests in flight finish, NBD_CMD_DISC is sent and the
 * transport is closed.
 */
export const startConnection = (transport: Transport, reader: ExactReader, negotiated: Negotiated, location: string): Effect.Effect<NbdConnection, never, Scope.Scope> =>
  Effect.gen(function* () {
    const pending = new Map<number, Pending>()
    let nextHandle = 1
    let broken: StorageError | undefined
    const slots = yield* Semaphore.make(MAX_IN_FLIGHT)

    /** Ends the connection: every request in flight and every later one fails with `error`. */
    const breakWith = (error: StorageError): Effect.Effect<void> =>
      Effect.gen(function* () {
        if (broken === undefined) broken = error
        for (const p of pending.values()) yield* Deferred.fail(p.done, broken)
        pending.clear()
        yield* transport.close
      })
    const violation = (reason: NbdProtocolErrorReason, message: string) => breakWith(connectionError(location, reason, message))
    const hungUp = (e: StreamEnded) =>
      violation("HungUp", `the NBD server closed the connection${pending.size > 0 ? ` with ${pending.size} request(s) unanswered` : ""}${e.got > 0 ? ` in the middle of a reply (${e.got} of ${e.wanted} bytes)` : ""}`)

    /** The last reply of a request: complete it (a read must have had all its bytes). */
    const finish = (handle: number, p: Pending): Effect.Effect<void> => {
      if (p.into !== undefined && negotiated.structuredReplies && p.error === undefined && p.covered !== p.length) {
        return violation("Malformed", `the NBD server's reply to a read of ${p.length} bytes at ${p.offset} covered ${p.covered} of them`)
      }
      pending.delete(handle)
      return p.error !== undefined ? Deferred.fail(p.done, p.error) : Deferred.succeed(p.done, undefined)
    }

    const header = new Uint8Array(20)
    const view = new DataView(header.buffer)

    /** A simple reply: error value and handle; a successful read's data follows. */
    const simpleReply = Effect.gen(function* () {
      yield* reader.fill(header.subarray(4, 16))
      const error = view.getUint32(4)
      const handle = view.getUint32(8) * 2 ** 32 + view.getUint32(12)
      const p = pending.get(handle)
      if (p === undefined) return yield* violation("Malformed", `the NBD server replied to unknown handle ${handle}`)
      if (error !== 0) {
        p.error = requestError(location, p.name, error, undefined, p.offset, p.length)
        return yield* finish(handle, p)
      }
      if (p.into !== undefined) {
        // With structured replies a read's data must come in chunks: the length of this one is unknown.
        if (negotiated.structuredReplies) return yield* violation("Malformed", "the NBD server sent a simple reply to a read after structured replies were agreed")
        yield* reader.fill(p.into)
        p.covered = p.length
      }
      yield* finish(handle, p)
    })

    const readChunk = (p: Pending, type: number, length: number, last: boolean): Effect.Effect<void, StreamEnded> =>
      Effect.gen(function* () {
        switch (type) {
          case ChunkType.NONE:
            if (length !== 0 || !last) return yield* violation("Malformed", `the NBD server sent a NONE chunk that is not the last one, or with ${length} bytes of payload`)
            return
          case ChunkType.OFFSET_DATA:
          case ChunkType.OFFSET_HOLE: {
            if (p.into === undefined) return yield* violation("Malformed", `the NBD server sent read data for a ${p.name} request`)
            if (type === ChunkType.OFFSET_HOLE ? length !== 12 : length <= 8 || length - 8 > p.length) {
              return yield* violation("Oversize", `the NBD server sent a ${type === ChunkType.OFFSET_HOLE ? "hole" : "data"} chunk of ${length} bytes for a read of ${p.length}`)
            }
            const fields = yield* reader.bytes(type === ChunkType.OFFSET_HOLE ? 12 : 8)
            const v = new DataView(fields.buffer)
            const at = v.getUint32(0) * 2 ** 32 + v.getUint32(4)
            const size = type === ChunkType.OFFSET_HOLE ? v.getUint32(8) : length - 8
            // Chunks must not overlap: more bytes than the read asked for is a server repeating itself.
            if (at < p.offset || at + size > p.offset + p.length || size === 0 || p.covered + size > p.length) {
              return yield* violation("Malformed", `the NBD server sent ${size} bytes at ${at} for a read of ${p.length} at ${p.offset}`)
            }
            const target = p.into.subarray(at - p.offset, at - p.offset + size)
            if (type === ChunkType.OFFSET_HOLE) target.fill(0)
            else yield* reader.fill(target)
            p.covered += size
            return
          }
          case ChunkType.BLOCK_STATUS: {
            if (p.contextId === undefined) return yield* violation("Malformed", `the NBD server sent block status for a ${p.name} request`)
            if (length < 12 || (length - 4) % 8 !== 0 || length > 4 + 8 * MAX_EXTENTS) {
              return yield* violation("Oversize", `the NBD server sent a block status chunk of ${length} bytes`)
            }
            const payload = yield* reader.bytes(length)
            const v = new DataView(payload.buffer)
            // Contexts not asked for in this request are skipped; a context id never granted is a violation.
            const context = v.getUint32(0)
            if (![...negotiated.contexts.values()].includes(context)) return yield* violation("Malformed", `the NBD server sent block status for unknown context ${context}`)
            if (context !== p.contextId) return
            // A server sending chunk after chunk without ending the reply is cut off, not buffered.
            if (p.extents.length + (length - 4) / 8 > MAX_EXTENTS) return yield* violation("Oversize", `the NBD server sent more than ${MAX_EXTENTS} extents for one request`)
            for (let at = 4; at < length; at += 8) {
              const extent = v.getUint32(at)
              if (extent === 0) return yield* violation("Malformed", "the NBD server sent an empty extent")
              p.extents.push({ length: extent, flags: v.getUint32(at + 4) })
            }
            return
          }
          default: {
            if ((type & 0x8000) === 0) return yield* violation("Malformed", `the NBD server sent a chunk of unknown type ${type}`)
            if (length < 6 || length > MAX_ERROR_PAYLOAD) return yield* violation("Oversize", `the NBD server sent an error chunk of ${length} bytes`)
            const payload = yield* reader.bytes(length)
            const v = new DataView(payload.buffer)
            const error = v.getUint32(0)
            const textLength = v.getUint16(4)
            if (error === 0 || 6 + textLength > length) return yield* violation("Malformed", "the NBD server sent a malformed error chunk")
            // Several error chunks may come (one per failed region); a server that never stops sending them is cut off.
            if (++p.errorChunks > MAX_ERROR_CHUNKS) return yield* violation("Oversize", `the NBD server sent more than ${MAX_ERROR_CHUNKS} error chunks for one request`)
            const text = new TextDecoder().decode(payload.subarray(6, 6 + textLength))
            p.error ??= requestError(location, p.name, error, text, p.offset, p.length)
            return
          }
        }
      })

    /** A structured reply chunk: flags, type, handle, length, then the payload its type defines. */
    const structuredChunk = Effect.gen(function* () {
      yield* reader.fill(header.subarray(4, 20))
      if (!negotiated.structuredReplies) return yield* violation("Malformed", "the NBD server sent a structured reply that was not agreed")
      const flags = view.getUint16(4)
      const type = view.getUint16(6)
      const handle = view.getUint32(8) * 2 ** 32 + view.getUint32(12)
      const length = view.getUint32(16)
      const p = pending.get(handle)
      if (p === undefined) return yield* violation("Malformed", `the NBD server replied to unknown handle ${handle}`)
      yield* readChunk(p, type, length, (flags & REPLY_FLAG_DONE) !== 0)
      if (broken === undefined && (flags & REPLY_FLAG_DONE) !== 0) yield* finish(handle, p)
    })

    const readLoop = Effect.gen(function* () {
      while (broken === undefined) {
        const more = yield* Effect.result(reader.fill(header.subarray(0, 4)))
        if (more._tag === "Failure") {
          // The end of the stream with nothing outstanding is a clean close (after NBD_CMD_DISC, or the server stopping).
          if (pending.size > 0 || more.failure.got > 0) yield* hungUp(more.failure)
          else yield* breakWith(connectionError(location, "HungUp", "the NBD server closed the connection"))
          return
        }
        const magic = view.getUint32(0)
        const step = magic === SIMPLE_REPLY_MAGIC ? simpleReply : magic === STRUCTURED_REPLY_MAGIC ? structuredChunk : undefined
        if (step === undefined) return yield* violation("WrongMagic", `the NBD server sent a reply with a wrong magic 0x${magic.toString(16).padStart(8, "0")}`)
        const outcome = yield* Effect.result(step)
        if (outcome._tag === "Failure") return yield* hungUp(outcome.failure)
      }
    })
    const readerFiber = yield* Effect.forkScoped(readLoop)

    const request: NbdConnection["request"] = (type, flags, offset, length, options = {}) =>
      slots.withPermits(1)(
        Effect.suspend(() => {
          if (broken !== undefined) return Effect.fail(broken)
          const handle = nextHandle++
          return Effect.flatMap(Deferred.make<void, StorageError>(), (done) => {
            // Checked again where the request is registered: the reader may have ended the connection meanwhile.
            if (broken !== undefined) return Effect.fail(broken)
            const p: Pending = {
              type,
              name: COMMAND_NAMES[type] ?? `command ${type}`,
              offset,
              length,
              into: options.into,
              covered: 0,
              contextId: options.contextId,
              extents: [],
              error: undefined,
              errorChunks: 0,
              done
            }
            pending.set(handle, p)
            const parts = [wire.request(type, flags, handle, offset, length)]
            if (options.payload !== undefined) parts.push(options.payload)
            return transport.write(parts).pipe(
              Effect.andThen(Deferred.await(done)),
              Effect.as(p.extents)
            )
          })
        })
      )

    // On close: wait for the requests in flight, say goodbye, hang up.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* slots.take(MAX_IN_FLIGHT)
        if (broken === undefined) {
          broken = connectionError(location, "Closed", `${location} is closed`)
          yield* transport.write([wire.request(Command.DISC, 0, 0, 0, 0)])
        }
        yield* transport.close
        yield* Fiber.interrupt(readerFiber)
      })
    )
    return { negotiated, request }
  })
