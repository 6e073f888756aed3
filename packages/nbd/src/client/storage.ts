/**
 * A `BlockStorageShape` over an NBD connection: what QEMU's nbd block
 * driver (a protocol node) offers the format above it. Reads and writes
 * are split at the server's maximum block size and sent concurrently;
 * `blockStatus` asks NBD_CMD_BLOCK_STATUS (one extent, NBD_CMD_FLAG_REQ_ONE)
 * of the context it was opened with and reads its flags as QEMU's client
 * does (bit 0 set: not data; bit 1 set: reads as zeros), so `qemu-img map`
 * over NBD shows the same; without a granted context everything is data.
 */
import { Effect } from "effect"
import { checkRange, closedError, readOnlyError, StorageError, type BlockStorageShape, type StorageExtent } from "@qcow2/storage"
import { Command, CommandFlag, STATE_HOLE, STATE_ZERO, TransmissionFlag } from "../protocol.js"
import type { Extent, NbdConnection } from "./connection.js"
import type { Negotiated } from "./handshake.js"

/** Longest TRIM / WRITE_ZEROES / BLOCK_STATUS range one request covers (the length field is 32 bits; QEMU keeps under 2^31). */
const MAX_RANGE = 2 ** 31 - 2 ** 20

/** An open NBD export as storage, with what the handshake settled. */
export interface NbdBlockStorage extends BlockStorageShape {
  readonly negotiated: Negotiated
  /** The context `blockStatus` reads, when the server granted it. */
  readonly statusContext: string | undefined
  /**
   * The extents of a granted metadata context from `offset` (at most
   * `length` bytes; the server may answer with fewer), as the server sends
   * them: each extent's length and the context's flags.
   */
  readonly extents: (context: string, offset: number, length: number) => Effect.Effect<ReadonlyArray<Extent>, StorageError>
}

/** Settings of one open export. */
export interface NbdStorageSettings {
  /** The name errors and messages show (QEMU's canonical `nbd+unix://…` / `nbd://…`). */
  readonly location: string
  readonly readOnly: boolean
  /** The metadata context `blockStatus` reads (base:allocation, or QEMU's x-dirty-bitmap choice). */
  readonly statusContext: string
}

/** The storage over a negotiated connection. `isOpen` turns false when its scope closes. */
export const makeNbdStorage = (connection: NbdConnection, settings: NbdStorageSettings, isOpen: () => boolean): NbdBlockStorage => {
  const { negotiated } = connection
  const { location } = settings
  const size = negotiated.size
  const has = (flag: number) => (negotiated.flags & flag) !== 0
  const readOnly = settings.readOnly || has(TransmissionFlag.READ_ONLY)
  const statusId = negotiated.contexts.get(settings.statusContext)
  const maxBlock = negotiated.maximumBlock

  const guard = (operation: string, offset: number, length: number, write: boolean): StorageError | undefined => {
    if (!isOpen()) return closedError(location, operation)
    const bad = checkRange(location, operation, offset, length)
    if (bad !== undefined) return bad
    if (write && readOnly) return readOnlyError(location, operation, offset, length)
    if (write && offset + length > size) {
      return new StorageError({ reason: "NoSpace", message: `${operation}: ${offset}+${length} is past the end of the NBD export (${size} bytes)`, offset, length, location, errno: "ENOSPC" })
    }
    return undefined
  }

  /** Runs `each` over [offset, offset + length) in pieces of at most `step` bytes, concurrently (the connection bounds how many). */
  const split = (offset: number, length: number, step: number, each: (at: number, n: number) => Effect.Effect<unknown, StorageError>) => {
    if (length <= step) return Effect.asVoid(each(offset, length))
    const pieces: Array<Effect.Effect<unknown, StorageError>> = []
    for (let at = 0; at < length; at += step) pieces.push(each(offset + at, Math.min(step, length - at)))
    return Effect.asVoid(Effect.all(pieces, { concurrency: "unbounded", discard: true }))
  }

  const extents = (context: string, offset: number, length: number): Effect.Effect<ReadonlyArray<Extent>, StorageError> => {
    const bad = guard("block status", offset, length, false)
    if (bad !== undefined) return Effect.fail(bad)
    const id = negotiated.contexts.get(context)
    if (id === undefined) return Effect.fail(new StorageError({ reason: "Unsupported", message: `the NBD server did not grant the metadata context '${context}'`, location }))
    const n = Math.min(length, size - offset, MAX_RANGE)
    if (n === 0) return Effect.succeed([])
    return connection.request(Command.BLOCK_STATUS, CommandFlag.REQ_ONE, offset, n, { contextId: id })
  }

  const storage: NbdBlockStorage = {
    location,
    negotiated,
    statusContext: statusId !== undefined ? settings.statusContext : undefined,
    capabilities: { readOnly, discard: !readOnly && has(TransmissionFlag.SEND_TRIM), alignment: Math.max(1, negotiated.preferredBlock) },
    read: (offset, into) => {
      const bad = guard("read", offset, into.length, false)
      if (bad !== undefined) return Effect.fail(bad)
      // Past the end reads as zeros (the BlockStorage contract); the server is asked only for what it has.
      const inside = Math.max(0, Math.min(into.length, size - offset))
      if (inside < into.length) into.fill(0, inside)
      return split(offset, inside, maxBlock, (at, n) => connection.request(Command.READ, 0, at, n, { into: into.subarray(at - offset, at - offset + n) }))
    },
    write: (offset, data) => {
      const bad = guard("write", offset, data.length, true)
      if (bad !== undefined) return Effect.fail(bad)
      return split(offset, data.length, maxBlock, (at, n) => connection.request(Command.WRITE, 0, at, n, { payload: data.subarray(at - offset, at - offset + n) }))
    },
    writeZeroes: (offset, length, unmap = false) => {
      const bad = guard("write zeroes", offset, length, true)
      if (bad !== undefined) return Effect.fail(bad)
      if (has(TransmissionFlag.SEND_WRITE_ZEROES)) {
        // NO_HOLE unless the caller may unmap: QEMU's nbd client sets it exactly when BDRV_REQ_MAY_UNMAP is absent.
        const flags = unmap ? 0 : CommandFlag.NO_HOLE
        return split(offset, length, MAX_RANGE, (at, n) => connection.request(Command.WRITE_ZEROES, flags, at, n))
      }
      const zeros = new Uint8Array(Math.min(length, maxBlock))
      return split(offset, length, zeros.length, (at, n) => connection.request(Command.WRITE, 0, at, n, { payload: zeros.subarray(0, n) }))
    },
    flush: () => {
      if (!isOpen()) return Effect.fail(closedError(location, "flush"))
      return has(TransmissionFlag.SEND_FLUSH) ? Effect.asVoid(connection.request(Command.FLUSH, 0, 0, 0)) : Effect.void
    },
    size: () => (isOpen() ? Effect.succeed(size) : Effect.fail(closedError(location, "size"))),
    // An NBD export has the size the server gives it (QEMU: "Cannot grow NBD nodes").
    resize: (newSize) => {
      if (!isOpen()) return Effect.fail(closedError(location, "resize"))
      if (readOnly) return Effect.fail(readOnlyError(location, "resize"))
      if (newSize === size) return Effect.void
      return Effect.fail(new StorageError({ reason: "Unsupported", message: newSize > size ? "Cannot grow NBD nodes" : "Cannot resize NBD nodes", location, errno: "ENOTSUP" }))
    },
    discard: (offset, length) => {
      const bad = guard("discard", offset, length, true)
      if (bad !== undefined) return Effect.fail(bad)
      return storage.capabilities.discard ? split(offset, length, MAX_RANGE, (at, n) => connection.request(Command.TRIM, 0, at, n)) : Effect.void
    },
    blockStatus: (offset, length) => {
      const bad = guard("block status", offset, length, false)
      if (bad !== undefined) return Effect.fail(bad)
      const n = Math.min(length, size - offset)
      const whole = (): StorageExtent => ({ length: n, data: true, zero: false })
      if (statusId === undefined || n === 0) return Effect.succeed(whole())
      return Effect.flatMap(connection.request(Command.BLOCK_STATUS, CommandFlag.REQ_ONE, offset, Math.min(n, MAX_RANGE), { contextId: statusId }), (list) => {
        const first = list[0]
        if (first === undefined) return Effect.fail(new StorageError({ reason: "Io", message: "the NBD server sent no extent for a block status request", location, offset, length, errno: "EIO" }))
        // An extent longer than asked for is cut to the request, as QEMU's client cuts it.
        return Effect.succeed({ length: Math.min(first.length, n), data: (first.flags & STATE_HOLE) === 0, zero: (first.flags & STATE_ZERO) !== 0 })
      })
    },
    extents
  }
  return storage
}
