/**
 * The NBD client against servers that misbehave, played by a scripted
 * server on a Unix socket: not NBD at all, oldstyle only, hanging up in
 * the handshake or in the middle of a request, truncated replies, wrong
 * magics, lengths larger than the request or the protocol allows,
 * chunks outside their request, unknown handles, error replies. Each
 * ends in a StorageError whose cause (an NbdProtocolError) names the
 * reason; none hangs or allocates what a length field claims.
 */
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { StorageError } from "@qcow2/storage"
import { ClientDecoder, type Request } from "../src/decoder.js"
import * as encode from "../src/encode.js"
import { ChunkType, Errno, Option, Reply, STRUCTURED_REPLY_MAGIC, TransmissionFlag } from "../src/protocol.js"
import type { NbdBlockStorage, NbdProtocolErrorReason } from "../src/client/index.js"
import { openNbd } from "../src/node.js"

let dir: string
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-nbdh-"))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const SIZE = 1024 * 1024

/** How the scripted server behaves; unset parts follow the protocol. */
interface Script {
  readonly greeting?: Uint8Array
  /** Answers an option instead of the default; "close" hangs up. */
  readonly onOption?: (option: number) => ReadonlyArray<Uint8Array> | "close" | undefined
  /** Handles one request of the transmission phase. */
  readonly onRequest?: (request: Request, socket: net.Socket) => void
}

const defaultAnswer = (option: number, decoder: ClientDecoder): ReadonlyArray<Uint8Array> => {
  switch (option) {
    case Option.STRUCTURED_REPLY:
      return [encode.optionReply(option, Reply.ACK)]
    case Option.SET_META_CONTEXT:
      return [encode.metaContextReply(option, 7, "base:allocation"), encode.optionReply(option, Reply.ACK)]
    case Option.GO:
      decoder.enterTransmission()
      return [encode.infoExport(option, SIZE, TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH), encode.optionReply(option, Reply.ACK)]
    default:
      return [encode.optionReply(option, Reply.ERR_UNSUP)]
  }
}

/** Serves `script` on a fresh Unix socket for the life of the scope. */
const scripted = (script: Script) =>
  Effect.acquireRelease(
    Effect.callback<{ socket: string; server: net.Server }>((resume) => {
      const socketPath = path.join(dir, `h${Math.random().toString(36).slice(2)}.sock`)
      const server = net.createServer((socket) => {
        socket.on("error", () => {})
        socket.write(script.greeting ?? encode.greeting())
        const decoder = new ClientDecoder()
        socket.on("data", (bytes: Buffer) => {
          decoder.push(new Uint8Array(bytes))
          for (let message = decoder.next(); message !== undefined; message = decoder.next()) {
            if (message.kind === "option") {
              const answer = script.onOption?.(message.option) ?? defaultAnswer(message.option, decoder)
              if (answer === "close") return void socket.destroy()
              for (const part of answer) socket.write(part)
            } else if (message.kind === "request" && message.request.type !== 2) {
              script.onRequest?.(message.request, socket)
            }
          }
        })
      })
      server.listen(socketPath, () => resume(Effect.succeed({ socket: socketPath, server })))
    }),
    ({ server }) => Effect.sync(() => server.close())
  )

/** Opens the scripted server's export and runs `use` on it; the failure, if any. */
const attempt = <A, E>(script: Script, use: (storage: NbdBlockStorage) => Effect.Effect<A, E>) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const { socket } = yield* scripted(script)
        const storage = yield* openNbd({ server: { type: "unix", path: socket }, exportName: "" }, { readOnly: false })
        return yield* use(storage)
      })
    ).pipe(Effect.exit)
  )

const failureOf = <A>(exit: Exit.Exit<A, StorageError | unknown>): StorageError => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const error = exit.cause.reasons.find((r) => r._tag === "Fail")
  if (error === undefined || error._tag !== "Fail") throw new Error(`not a typed failure: ${String(exit.cause)}`)
  return error.error as StorageError
}

const causeReason = (error: StorageError): NbdProtocolErrorReason | undefined => (error.cause as { reason?: NbdProtocolErrorReason } | undefined)?.reason

const read = (offset: number, length: number) => (storage: NbdBlockStorage) => {
  const into = new Uint8Array(length)
  return Effect.as(storage.read(offset, into), into)
}

/** A structured chunk header with any length (what a hostile server sends). */
const rawChunk = (request: Request, flags: number, type: number, length: number): Uint8Array => {
  const out = new Uint8Array(20)
  const v = new DataView(out.buffer)
  v.setUint32(0, STRUCTURED_REPLY_MAGIC)
  v.setUint16(4, flags)
  v.setUint16(6, type)
  v.setUint32(8, request.handleHigh)
  v.setUint32(12, request.handleLow)
  v.setUint32(16, length)
  return out
}

describe("handshake", () => {
  it("refuses what is not an NBD server", async () => {
    const error = failureOf(await attempt({ greeting: new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n") }, read(0, 1)))
    expect(error.reason).toBe("Io")
    expect(causeReason(error)).toBe("WrongMagic")
  })

  it("refuses an oldstyle-only server", async () => {
    const greeting = new Uint8Array(18)
    new DataView(greeting.buffer).setBigUint64(0, 0x4e42444d41474943n)
    new DataView(greeting.buffer).setBigUint64(8, 0x00420281861253n)
    const error = failureOf(await attempt({ greeting }, read(0, 1)))
    expect(causeReason(error)).toBe("Unsupported")
  })

  it("fails when the server hangs up during option haggling", async () => {
    const error = failureOf(await attempt({ onOption: () => "close" }, read(0, 1)))
    expect(causeReason(error)).toBe("HungUp")
  })

  it("refuses an option reply longer than it reads, without reading it", async () => {
    const huge = encode.optionReply(Option.STRUCTURED_REPLY, Reply.ACK)
    new DataView(huge.buffer).setUint32(16, 0xfffffff0)
    const error = failureOf(await attempt({ onOption: (o) => (o === Option.STRUCTURED_REPLY ? [huge] : undefined) }, read(0, 1)))
    expect(causeReason(error)).toBe("Oversize")
  })

  it("reports an unknown export with the server's words, as QEMU does", async () => {
    const refuse = (o: number) => (o === Option.GO ? [encode.optionError(o, Reply.ERR_UNKNOWN, "export '' not present")] : undefined)
    const error = failureOf(await attempt({ onOption: refuse }, read(0, 1)))
    expect(causeReason(error)).toBe("Refused")
    expect(error.message).toBe("Requested export not available\nserver reported: export '' not present")
    expect(error.driverMessage).toBe(true)
  })
})

describe("transmission", () => {
  it("reads data and hole chunks in any order, and fails one request with the server's error while the connection goes on", async () => {
    let count = 0
    const exit = await attempt(
      {
        onRequest: (request, socket) => {
          if (count++ === 0) {
            socket.write(encode.chunkHole(request, false, request.offset + 2, request.length - 2))
            socket.write(encode.chunkDataHeader(request, true, request.offset, 2))
            socket.write(new Uint8Array([1, 2]))
          } else if (count === 2) socket.write(encode.chunkError(request, Errno.EIO, "disk on fire"))
          else socket.write(encode.chunkNone(request))
        }
      },
      (storage) =>
        Effect.gen(function* () {
          const first = new Uint8Array(8).fill(9)
          yield* storage.read(0, first)
          const failed = yield* Effect.flip(storage.read(0, new Uint8Array(4)))
          yield* storage.flush()
          return { first: [...first], failed }
        })
    )
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(exit.value.first).toEqual([1, 2, 0, 0, 0, 0, 0, 0])
    expect(exit.value.failed.reason).toBe("Io")
    expect(exit.value.failed.errno).toBe("EIO")
    expect(causeReason(exit.value.failed)).toBe("RequestFailed")
    expect(exit.value.failed.message).toContain("disk on fire")
  })

  it("fails every request in flight, and every later one, when the server hangs up mid-request", async () => {
    const exit = await attempt({ onRequest: (_request, socket) => void socket.destroy() }, (storage) =>
      Effect.gen(function* () {
        const results = yield* Effect.all([0, 1, 2].map((i) => Effect.flip(storage.read(i * 4096, new Uint8Array(4096)))), { concurrency: "unbounded" })
        const later = yield* Effect.flip(storage.read(0, new Uint8Array(1)))
        return [...results, later]
      })
    )
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    for (const error of exit.value) expect(causeReason(error)).toBe("HungUp")
  })

  it("fails on a reply cut short by the server hanging up", async () => {
    const error = failureOf(
      await attempt(
        {
          onRequest: (request, socket) => {
            socket.write(encode.chunkDataHeader(request, true, request.offset, request.length))
            socket.end(new Uint8Array(100))
          }
        },
        read(0, 4096)
      )
    )
    expect(causeReason(error)).toBe("HungUp")
    expect(error.message).toContain("in the middle of a reply")
  })

  it("refuses a reply with a wrong magic", async () => {
    const error = failureOf(await attempt({ onRequest: (_r, socket) => void socket.write(new Uint8Array(20).fill(0xab)) }, read(0, 16)))
    expect(causeReason(error)).toBe("WrongMagic")
  })

  it("refuses a data chunk longer than the read, before reading it", async () => {
    const error = failureOf(await attempt({ onRequest: (request, socket) => void socket.write(rawChunk(request, 1, ChunkType.OFFSET_DATA, 0xffffffff)) }, read(0, 4096)))
    expect(causeReason(error)).toBe("Oversize")
  })

  it("refuses a block status chunk longer than the protocol allows", async () => {
    const error = failureOf(
      await attempt({ onRequest: (request, socket) => void socket.write(rawChunk(request, 1, ChunkType.BLOCK_STATUS, 0xfffffff4)) }, (storage) => storage.blockStatus!(0, SIZE))
    )
    expect(causeReason(error)).toBe("Oversize")
  })

  it("refuses data outside the read it answers, a reply to an unknown handle, a read left partly uncovered", async () => {
    const outside = failureOf(
      await attempt(
        {
          onRequest: (request, socket) => {
            socket.write(encode.chunkDataHeader(request, true, request.offset + request.length, 4))
            socket.write(new Uint8Array(4))
          }
        },
        read(4096, 16)
      )
    )
    expect(causeReason(outside)).toBe("Malformed")
    const unknown = failureOf(await attempt({ onRequest: (request, socket) => void socket.write(encode.chunkNone({ ...request, handleLow: request.handleLow + 99 })) }, read(0, 16)))
    expect(causeReason(unknown)).toBe("Malformed")
    const partial = failureOf(
      await attempt(
        {
          onRequest: (request, socket) => {
            socket.write(encode.chunkHole(request, false, request.offset, 8))
            socket.write(encode.chunkNone(request))
          }
        },
        read(0, 16)
      )
    )
    expect(causeReason(partial)).toBe("Malformed")
  })

  it("cuts off a server that sends chunks without ever ending the reply", async () => {
    const endless = failureOf(
      await attempt(
        {
          onRequest: (request, socket) => {
            const chunk = encode.chunkBlockStatus(request, false, 7, Array.from({ length: 1024 }, () => ({ length: 512, flags: 0 })))
            for (let i = 0; i < 70; i++) socket.write(chunk)
          }
        },
        (storage) => storage.blockStatus!(0, SIZE)
      )
    )
    expect(causeReason(endless)).toBe("Oversize")
    const repeated = failureOf(
      await attempt(
        {
          onRequest: (request, socket) => {
            for (let i = 0; i < 3; i++) socket.write(encode.chunkHole(request, false, request.offset, request.length))
          }
        },
        read(0, 4096)
      )
    )
    expect(causeReason(repeated)).toBe("Malformed")
  })

  it("refuses a simple reply to a read once structured replies were agreed (its length would be unknown)", async () => {
    const error = failureOf(await attempt({ onRequest: (request, socket) => void socket.write(encode.simpleReply(request, 0)) }, read(0, 16)))
    expect(causeReason(error)).toBe("Malformed")
  })

  it("refuses block status for a context it never granted", async () => {
    const error = failureOf(
      await attempt({ onRequest: (request, socket) => void socket.write(encode.chunkBlockStatus(request, true, 99, [{ length: 512, flags: 0 }])) }, (storage) => storage.blockStatus!(0, SIZE))
    )
    expect(causeReason(error)).toBe("Malformed")
  })

  it("reads block status flags as QEMU does and cuts an extent longer than asked for", async () => {
    const exit = await attempt({ onRequest: (request, socket) => void socket.write(encode.chunkBlockStatus(request, true, 7, [{ length: SIZE * 2, flags: 3 }])) }, (storage) =>
      storage.blockStatus!(4096, 8192)
    )
    expect(exit).toEqual(Exit.succeed({ length: 8192, data: false, zero: true }))
  })

  it("checks arguments and the export's size before sending anything", async () => {
    const exit = await attempt({ onRequest: () => {} }, (storage) =>
      Effect.all([Effect.flip(storage.write(SIZE - 1, new Uint8Array(2))), Effect.flip(storage.read(-1, new Uint8Array(1))), Effect.flip(storage.resize(SIZE * 2))])
    )
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(exit.value.map((e) => e.reason)).toEqual(["NoSpace", "OutOfRange", "Unsupported"])
    expect(exit.value[2]!.message).toBe("Cannot grow NBD nodes")
  })
})
