/**
 * The Node edge of the NBD server: a node:net listener (TCP or Unix
 * socket) whose connections are served by `serveConnection`, with
 * qemu-nbd's connection policy: at most `maxConnections` clients at once
 * (others wait, accepted but not greeted, as they would wait in the listen
 * backlog), and without `persistent` the server is done once the last
 * client that reached the transmission phase has gone.
 */
import * as fs from "node:fs"
import * as net from "node:net"
import { Data, Deferred, Effect, FiberSet } from "effect"
import type { Scope } from "effect"
import { serveConnection, type Transport } from "./connection.js"
import type { ServerConfig } from "./negotiate.js"

/** The listener could not be set up (the socket address is taken, not allowed, not local…). */
export class NbdListenError extends Data.TaggedError("NbdListenError")<{
  readonly reason: "AddressInUse" | "PermissionDenied" | "AddressNotAvailable" | "Other"
  readonly message: string
}> {}

/** Where and how `listen` accepts clients (qemu-nbd's `-b`, `-p`, `-k`, `-e`, `-t`). */
export interface ListenOptions {
  /** TCP address to bind (qemu-nbd -b; default 0.0.0.0). Ignored with `path`. */
  readonly host?: string
  /** TCP port (qemu-nbd -p; default 10809; 0 picks a free one). */
  readonly port?: number
  /** Unix socket path (qemu-nbd -k) instead of TCP. */
  readonly path?: string
  /** Clients served at once (qemu-nbd -e; default 1; 0 = no limit). */
  readonly maxConnections?: number
  /** Keep serving after the last client has gone (qemu-nbd -t). */
  readonly persistent?: boolean
}

/** A listening server, stopped when its scope closes. */
export interface NbdListener {
  /** Where the server listens: "host:port" for TCP (port resolved when 0 was asked), or the socket path. */
  readonly address: { readonly host: string; readonly port: number } | { readonly path: string }
  /** Completes when a non-persistent server has served its last client; never for a persistent one. */
  readonly done: Effect.Effect<void>
}

/** Clients accepted while all slots are taken, waiting for one; beyond this they are turned away. */
const MAX_WAITING = 64

/**
 * Input read ahead of the connection, at most: past it the socket is paused
 * and the rest waits in the kernel (the connection bounds its requests in
 * flight by not reading; this bounds what sits in between).
 */
const READ_AHEAD = 256 * 1024

/**
 * A Transport over a net.Socket. The socket keeps flowing while less than
 * READ_AHEAD bytes wait to be read (pausing and resuming it for every
 * request cost two system calls each); each reply goes out corked, as one
 * writev, however many parts it has.
 */
export const socketTransport = (socket: net.Socket): Transport => {
  const queue: Uint8Array[] = []
  let queued = 0
  let ended = false
  let waiter: ((bytes: Uint8Array | undefined) => void) | undefined
  socket.setNoDelay(true)
  socket.on("data", (bytes: Buffer) => {
    const w = waiter
    waiter = undefined
    if (w !== undefined) return w(bytes)
    queue.push(bytes)
    queued += bytes.length
    if (queued >= READ_AHEAD) socket.pause()
  })
  const finish = () => {
    ended = true
    const w = waiter
    waiter = undefined
    w?.(undefined)
  }
  socket.on("end", finish)
  socket.on("close", finish)
  // ECONNRESET and the like: the stream simply ends.
  socket.on("error", finish)
  return {
    read: Effect.callback<Uint8Array | undefined>((resume) => {
      const next = queue.shift()
      if (next !== undefined) {
        queued -= next.length
        if (queued < READ_AHEAD && socket.isPaused() && !ended) socket.resume()
        return resume(Effect.succeed(next))
      }
      if (ended) return resume(Effect.succeed(undefined))
      waiter = (bytes) => resume(Effect.succeed(bytes))
      if (socket.isPaused()) socket.resume()
      return Effect.sync(() => {
        waiter = undefined
      })
    }),
    write: (parts) =>
      Effect.callback<void>((resume) => {
        if (socket.destroyed || !socket.writable) return resume(Effect.void)
        let ready = true
        if (parts.length > 1) socket.cork()
        for (const part of parts) ready = socket.write(part)
        if (parts.length > 1) socket.uncork()
        if (ready) return resume(Effect.void)
        const go = () => {
          socket.off("drain", go)
          socket.off("close", go)
          resume(Effect.void)
        }
        socket.on("drain", go)
        socket.on("close", go)
      }),
    close: Effect.sync(() => {
      if (!socket.destroyed) socket.end(() => socket.destroy())
    })
  }
}

const removeStaleSocket = (path: string): void => {
  try {
    if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path)
  } catch {
    // nothing there (or not ours to remove): listen reports what is wrong
  }
}

const listenError = (error: NodeJS.ErrnoException, where: string): NbdListenError => {
  const text = error.code === "EADDRINUSE" ? "Address already in use" : error.code === "EACCES" ? "Permission denied" : error.code === "EADDRNOTAVAIL" ? "Cannot assign requested address" : error.message
  const reason = error.code === "EADDRINUSE" ? "AddressInUse" : error.code === "EACCES" ? "PermissionDenied" : error.code === "EADDRNOTAVAIL" ? "AddressNotAvailable" : "Other"
  return new NbdListenError({ reason, message: `Failed to bind socket${where}: ${text}` })
}

/**
 * Listens and serves `config`'s exports until the scope closes (then the
 * listener stops, every connection finishes its requests in flight and is
 * closed, a Unix socket file is removed).
 */
export const listen = (config: ServerConfig, options: ListenOptions): Effect.Effect<NbdListener, NbdListenError, Scope.Scope> =>
  Effect.gen(function* () {
    const limit = options.maxConnections ?? 1
    const finished = yield* Deferred.make<void>()
    const run = yield* FiberSet.makeRuntime<never, void, never>()
    let active = 0
    const waiting: net.Socket[] = []

    const start = (socket: net.Socket): void => {
      active++
      run(
        serveConnection(socketTransport(socket), config).pipe(
          Effect.flatMap((end) =>
            Effect.sync(() => {
              active--
              const next = waiting.shift()
              if (next !== undefined) start(next)
              else if (end.negotiated && active === 0 && options.persistent !== true) Deferred.doneUnsafe(finished, Effect.void)
            })
          )
        )
      )
    }

    const server = net.createServer({ pauseOnConnect: true }, (socket) => {
      if (limit === 0 || active < limit) start(socket)
      else if (waiting.length < MAX_WAITING) {
        socket.on("error", () => {})
        socket.on("close", () => {
          const i = waiting.indexOf(socket)
          if (i >= 0) waiting.splice(i, 1)
        })
        waiting.push(socket)
      } else socket.destroy()
    })

    const where = options.path !== undefined ? ` to ${options.path}` : ""
    yield* Effect.acquireRelease(
      Effect.callback<void, NbdListenError>((resume) => {
        const onError = (error: NodeJS.ErrnoException) => resume(Effect.fail(listenError(error, where)))
        server.once("error", onError)
        const ready = () => {
          server.off("error", onError)
          resume(Effect.void)
        }
        // A socket file left by an earlier server is replaced, as QEMU replaces it.
        if (options.path !== undefined) removeStaleSocket(options.path)
        if (options.path !== undefined) server.listen(options.path, ready)
        else server.listen(options.port ?? 10809, options.host ?? "0.0.0.0", ready)
      }),
      // Stops accepting at once; the connections themselves are closed by the FiberSet's finalizer.
      () =>
        Effect.sync(() => {
          for (const socket of waiting.splice(0)) socket.destroy()
          server.close()
        })
    )
    server.on("error", () => {})
    const bound = server.address()
    const address =
      options.path !== undefined || bound === null || typeof bound === "string"
        ? { path: options.path ?? String(bound) }
        : { host: bound.address, port: bound.port }
    return { address, done: Deferred.await(finished) }
  })

export { makeNbdStorageOpener, NbdStorageOpener, openNbd } from "./client/node.js"
