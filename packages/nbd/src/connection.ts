/**
 * One client connection, from greeting to close, over any byte transport
 * (a TCP or Unix socket at the edge, an in-memory pipe in tests).
 *
 * Handshake options are answered one at a time. In transmission, requests
 * run concurrently (replies may come out of order, proto.md "Transmission"),
 * at most `MAX_IN_FLIGHT` at once and `IN_FLIGHT_BYTES` of read/write
 * payload: when either bound is reached the connection stops reading, so a
 * client that floods requests or does not read its replies is slowed down,
 * not buffered. Each request runs to its end even when the connection is
 * being shut down, so no write is cut in half; NBD_CMD_DISC, the end of
 * the stream or a malformed request stops reading, and the transport is
 * closed once the requests in flight have replied.
 */
import { Effect, FiberSet, Semaphore } from "effect"
import { ClientDecoder, type ClientMessage, type Request } from "./decoder.js"
import * as encode from "./encode.js"
import { Negotiation, type ServerConfig, type Session } from "./negotiate.js"
import { Command, Errno, MAX_PAYLOAD } from "./protocol.js"
import { checkRequest, errorReply, execute } from "./transmission.js"

/** A byte stream to one client. */
export interface Transport {
  /** The next bytes from the client; `undefined` once the stream has ended or failed. */
  readonly read: Effect.Effect<Uint8Array | undefined>
  /**
   * Sends `parts` back to back as one message (never interleaved with
   * another write); completes when the transport can take more. Writes to
   * a closed transport are dropped (the next read reports the end).
   */
  readonly write: (parts: ReadonlyArray<Uint8Array>) => Effect.Effect<void>
  /** Ends the connection (a hard disconnect once everything written is sent). */
  readonly close: Effect.Effect<void>
}

/** Requests one connection runs at once (QEMU's server allows 16 too). */
export const MAX_IN_FLIGHT = 16
/** Read/write payload bytes one connection holds at once: two maximum-size requests. */
export const IN_FLIGHT_BYTES = 2 * MAX_PAYLOAD

/** How a connection ended: `negotiated` when it reached the transmission phase (qemu-nbd counts those for exiting). */
export interface ConnectionEnd {
  readonly negotiated: boolean
}

/** Reads until the decoder has a whole message; undefined at the end of the stream. */
const nextMessage = (transport: Transport, decoder: ClientDecoder): Effect.Effect<ClientMessage | undefined> =>
  Effect.gen(function* () {
    while (true) {
      const message = decoder.next()
      if (message !== undefined) return message
      const bytes = yield* transport.read
      if (bytes === undefined) return undefined
      decoder.push(bytes)
    }
  })

/** Option haggling; the session once the client has chosen an export, undefined if the connection ends first. */
const handshake = (transport: Transport, decoder: ClientDecoder, config: ServerConfig): Effect.Effect<Session | undefined> =>
  Effect.gen(function* () {
    yield* transport.write([encode.greeting()])
    const negotiation = new Negotiation(config)
    while (true) {
      const message = yield* nextMessage(transport, decoder)
      if (message === undefined) return undefined
      switch (message.kind) {
        case "clientFlags":
          if (negotiation.clientFlags(message.flags).kind === "close") return undefined
          continue
        case "option":
        case "oversizedOption": {
          const outcome = message.kind === "option" ? negotiation.option(message.option, message.data) : negotiation.oversized(message.option)
          if (outcome.replies.length > 0) yield* transport.write(outcome.replies)
          switch (outcome.next.kind) {
            case "continue":
              continue
            case "close":
              return undefined
            case "transmission":
              decoder.enterTransmission()
              return outcome.next.session
          }
        }
        // Requests are only decoded after enterTransmission; a malformed option ends the connection.
        case "request":
        case "oversizedWrite":
        case "malformed":
          return undefined
      }
    }
  })

/** Payload bytes a request holds while it runs (counted against IN_FLIGHT_BYTES). */
const payloadBytes = (request: Request): number =>
  request.type === Command.READ || request.type === Command.WRITE ? Math.min(request.length, MAX_PAYLOAD) : 0

/** The transmission phase: requests until NBD_CMD_DISC, the end of the stream, or a malformed request. */
const transmission = (transport: Transport, decoder: ClientDecoder, session: Session): Effect.Effect<void> =>
  Effect.scoped(
    Effect.gen(function* () {
      const slots = yield* Semaphore.make(MAX_IN_FLIGHT)
      const bytes = yield* Semaphore.make(IN_FLIGHT_BYTES)
      const running = yield* FiberSet.make<void, never>()
      while (true) {
        const message = yield* nextMessage(transport, decoder)
        if (message === undefined || message.kind === "malformed") break
        if (message.kind !== "request" && message.kind !== "oversizedWrite") break
        const { request } = message
        if (request.type === Command.DISC) break
        if (message.kind === "oversizedWrite") {
          yield* transport.write(errorReply(request, session, Errno.EINVAL, `write of ${request.length} bytes is larger than the maximum ${MAX_PAYLOAD}`))
          continue
        }
        const refusal = checkRequest(request, session)
        if (refusal !== undefined) {
          yield* transport.write(errorReply(request, session, refusal.errno, refusal.message))
          continue
        }
        const cost = payloadBytes(request)
        yield* slots.take(1)
        yield* bytes.take(cost)
        const run = execute(request, message.payload, session).pipe(
          Effect.flatMap((reply) => transport.write(reply)),
          Effect.ensuring(Effect.andThen(bytes.release(cost), slots.release(1))),
          // A request that started finishes and replies, even during shutdown.
          Effect.uninterruptible
        )
        yield* FiberSet.run(running, run)
      }
      yield* FiberSet.awaitEmpty(running)
    })
  )

/**
 * Serves one client over `transport` until it disconnects, then closes the
 * transport. Never fails: protocol violations end the connection.
 */
export const serveConnection = (transport: Transport, config: ServerConfig): Effect.Effect<ConnectionEnd> =>
  Effect.gen(function* () {
    const decoder = new ClientDecoder()
    const session = yield* handshake(transport, decoder, config)
    if (session === undefined) return { negotiated: false }
    yield* transmission(transport, decoder, session)
    return { negotiated: true }
  }).pipe(Effect.ensuring(transport.close))
