/**
 * The Node edge of the NBD client: connects a TCP or Unix socket
 * (node:net) and opens the export over it, and the `StorageOpener` for
 * NBD names (`nbd:…`, `nbd://…`, `nbd+unix://…`, `json:{"driver":"nbd",…}`).
 */
import * as net from "node:net"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { StorageError, StorageOpener, type StorageErrorReason, type StorageOpenerShape } from "@qcow2/storage"
import { socketTransport } from "../node.js"
import { displayNameOf, parseNbdName, type NbdTarget } from "./address.js"
import { NbdProtocolError, openError } from "./errors.js"
import { openOverTransport, type NbdOpenOptions } from "./open.js"
import type { NbdBlockStorage } from "./storage.js"

/** strerror() of what connect(2) fails with, as QEMU's "Failed to connect to …" message shows it. */
const CONNECT_ERRORS: Readonly<Record<string, { readonly text: string; readonly reason: StorageErrorReason }>> = {
  ENOENT: { text: "No such file or directory", reason: "NotFound" },
  ECONNREFUSED: { text: "Connection refused", reason: "Io" },
  EACCES: { text: "Permission denied", reason: "PermissionDenied" },
  ENOTSOCK: { text: "Socket operation on non-socket", reason: "Io" },
  ETIMEDOUT: { text: "Connection timed out", reason: "Io" },
  EHOSTUNREACH: { text: "No route to host", reason: "Io" },
  ENETUNREACH: { text: "Network is unreachable", reason: "Io" },
  ENOTFOUND: { text: "Name or service not known", reason: "NotFound" },
  EAI_AGAIN: { text: "Temporary failure in name resolution", reason: "Io" }
}

/** Connects the socket of `target`; QEMU's message when it cannot. */
const connect = (target: NbdTarget, location: string): Effect.Effect<net.Socket, StorageError> =>
  Effect.callback<net.Socket, StorageError>((resume) => {
    const server = target.server
    const where = server.type === "unix" ? server.path : `${server.host}:${server.port}`
    const socket = server.type === "unix" ? net.createConnection({ path: server.path }) : net.createConnection({ host: server.host, port: server.port })
    const onError = (error: NodeJS.ErrnoException) => {
      const known = CONNECT_ERRORS[error.code ?? ""]
      const message = `Failed to connect to '${where}': ${known?.text ?? error.message}`
      socket.destroy()
      resume(Effect.fail(new StorageError({ reason: known?.reason ?? "Io", message, location, ...(error.code !== undefined ? { errno: error.code } : {}), cause: new NbdProtocolError({ reason: "ConnectFailed", message }) })))
    }
    socket.once("error", onError)
    socket.once("connect", () => {
      socket.off("error", onError)
      resume(Effect.succeed(socket))
    })
    return Effect.sync(() => socket.destroy())
  })

/** Connects to `target` and opens its export, for the life of the scope. */
export const openNbd = (target: NbdTarget, options: NbdOpenOptions): Effect.Effect<NbdBlockStorage, StorageError, Scope.Scope> =>
  Effect.gen(function* () {
    const socket = yield* connect(target, displayNameOf(target))
    yield* Effect.addFinalizer(() => Effect.sync(() => socket.destroy()))
    return yield* openOverTransport(socketTransport(socket), target, options)
  }).pipe(Effect.mapError(openError))

/**
 * Opens NBD names; a name that is not one fails with reason NotFound.
 * Exports cannot be created or truncated; a backing name found in an image
 * served over NBD stands for itself (QEMU resolves no path against a URI
 * it cannot combine with).
 */
export const makeNbdStorageOpener = (): StorageOpenerShape => ({
  open: (name, options) => {
    const parsed = parseNbdName(name)
    if (parsed === undefined) return Effect.fail(new StorageError({ reason: "NotFound", message: `'${name}' is not an NBD name`, location: name }))
    if (!parsed.ok) return Effect.fail(new StorageError({ reason: "NotFound", message: parsed.message, location: name, driverMessage: true }))
    if (options.create === true || options.truncate === true) {
      return Effect.fail(new StorageError({ reason: "Unsupported", message: "NBD exports cannot be created", location: name }))
    }
    return openNbd(parsed.target, { readOnly: options.readOnly, requireWritable: true })
  },
  resolve: (_from, name) => name
})

/** A Layer providing StorageOpener for NBD names. */
export const NbdStorageOpener = {
  make: makeNbdStorageOpener,
  layer: Layer.sync(StorageOpener, makeNbdStorageOpener)
}
