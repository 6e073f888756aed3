/**
 * Opening an NBD export over a connected byte transport: handshake, then
 * the transmission phase as storage, for the life of a scope. Portable
 * (no sockets); `@qcow2/nbd/node` connects the transport.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import { StorageError } from "@qcow2/storage"
import type { Transport } from "../connection.js"
import { BASE_ALLOCATION, TransmissionFlag } from "../protocol.js"
import { startConnection } from "./connection.js"
import { handshake } from "./handshake.js"
import { ExactReader } from "./reader.js"
import { makeNbdStorage, type NbdBlockStorage } from "./storage.js"
import { displayNameOf, type NbdTarget } from "./address.js"

/** How to open an export. */
export interface NbdOpenOptions {
  /** Refuse writes on this side (qemu-io -r); a read-only export is read-only whatever this says. */
  readonly readOnly: boolean
  /**
   * Fail when the export is read-only but `readOnly` is false, as QEMU
   * does for a read-write open without auto-read-only; default: open it
   * read-only instead.
   */
  readonly requireWritable?: boolean
  /** More metadata contexts to select besides the one block status reads (see `NbdBlockStorage.extents`). */
  readonly extraContexts?: ReadonlyArray<string>
}

/**
 * Negotiates `target`'s export on `transport` and returns it as storage.
 * When the scope closes the requests in flight finish, NBD_CMD_DISC is
 * sent and the transport closed. Failures are StorageErrors whose cause
 * is an NbdProtocolError.
 */
export const openOverTransport = (transport: Transport, target: NbdTarget, options: NbdOpenOptions): Effect.Effect<NbdBlockStorage, StorageError, Scope.Scope> =>
  Effect.gen(function* () {
    const location = displayNameOf(target)
    const statusContext = target.statusContext ?? BASE_ALLOCATION
    const reader = new ExactReader(transport)
    const negotiated = yield* handshake(transport, reader, { exportName: target.exportName, metaContexts: [statusContext, ...(options.extraContexts ?? [])] }, location).pipe(
      Effect.tapError(() => transport.close)
    )
    // QEMU fails when the context named by x-dirty-bitmap is not granted.
    if (target.statusContext !== undefined && !negotiated.contexts.has(target.statusContext)) {
      yield* transport.close
      // QEMU 7.2 says no more than this (its message names no context).
      return yield* new StorageError({ reason: "Unsupported", message: "Could not open image: Invalid argument", location, errno: "EINVAL" })
    }
    // QEMU refuses a read-write open of a read-only export unless it may fall back to read-only.
    if (options.requireWritable === true && !options.readOnly && (negotiated.flags & TransmissionFlag.READ_ONLY) !== 0) {
      yield* transport.close
      // QEMU 7.2's words (bdrv_apply_auto_read_only's EACCES, reported without its text).
      return yield* new StorageError({ reason: "ReadOnly", message: "Could not open image: Permission denied", location, errno: "EACCES" })
    }
    let open = true
    const connection = yield* startConnection(transport, reader, negotiated, location)
    yield* Effect.addFinalizer(() => Effect.sync(() => void (open = false)))
    return makeNbdStorage(connection, { location, readOnly: options.readOnly, statusContext }, () => open)
  })
