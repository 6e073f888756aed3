import { Effect } from "effect"
import { StorageError } from "@qcow2/storage"

/**
 * The IndexedDB schema, and IndexedDB's callbacks as Effects.
 *
 * One database holds many stores (images): `files` maps a store name to its
 * {@link FileRecord}; `chunks` holds the stores' bytes, keyed by
 * `[name, chunkIndex]`, so one store's chunks are one key range. A chunk
 * that is absent reads as zeros.
 */

export const FILES = "files"
export const CHUNKS = "chunks"
const SCHEMA_VERSION = 1

/** What `files` holds for one store. */
export interface FileRecord {
  readonly size: number
  /** Bytes per chunk record, fixed when the store is created. */
  readonly chunkSize: number
}

/** A DOMException-like failure: IndexedDB reports its errors by name. */
interface NamedError {
  readonly name?: string
  readonly message?: string
}

/** Turns an IndexedDB failure into a StorageError; a full quota is `NoSpace`. */
export const idbFailure = (location: string, operation: string, error: NamedError | null | undefined): StorageError => {
  const name = error?.name ?? "UnknownError"
  const detail = error?.message !== undefined && error.message !== "" ? `${name}: ${error.message}` : name
  if (name === "QuotaExceededError") {
    return new StorageError({ reason: "NoSpace", message: `${operation}: ${location}: the browser's storage quota is exhausted (${detail})`, location, errno: "ENOSPC", cause: error })
  }
  return new StorageError({ reason: "Io", message: `${operation}: ${location}: ${detail}`, location, errno: "EIO", cause: error })
}

/** Opens (and on first use creates) database `name`. */
export const openDatabase = (factory: IDBFactory, name: string, location: string): Effect.Effect<IDBDatabase, StorageError> =>
  Effect.callback<IDBDatabase, StorageError>((resume) => {
    let request: IDBOpenDBRequest
    try {
      request = factory.open(name, SCHEMA_VERSION)
    } catch (e) {
      resume(Effect.fail(idbFailure(location, "open", e as NamedError)))
      return
    }
    request.onupgradeneeded = () => {
      const db = request.result
      if (!db.objectStoreNames.contains(FILES)) db.createObjectStore(FILES)
      if (!db.objectStoreNames.contains(CHUNKS)) db.createObjectStore(CHUNKS)
    }
    request.onsuccess = () => resume(Effect.succeed(request.result))
    request.onerror = () => resume(Effect.fail(idbFailure(location, "open", request.error)))
    request.onblocked = () =>
      resume(Effect.fail(new StorageError({ reason: "Io", message: `open: ${location}: the database is blocked by an older version open elsewhere`, location })))
  })

/** Runs one request and gives its result. */
export const request = <A>(location: string, operation: string, make: () => IDBRequest<A>): Effect.Effect<A, StorageError> =>
  Effect.callback<A, StorageError>((resume) => {
    let req: IDBRequest<A>
    try {
      req = make()
    } catch (e) {
      resume(Effect.fail(idbFailure(location, operation, e as NamedError)))
      return
    }
    req.onsuccess = () => resume(Effect.succeed(req.result))
    req.onerror = (event) => {
      event.preventDefault()
      resume(Effect.fail(idbFailure(location, operation, req.error)))
    }
  })

/**
 * Runs `fill` in one read-write transaction and succeeds when the
 * transaction has committed (`complete`): all of it is stored, or, on any
 * failure or abort, none of it. Durability "strict" where the browser has
 * the option (committed means on disk).
 */
export const commit = (
  db: IDBDatabase,
  location: string,
  operation: string,
  fill: (files: IDBObjectStore, chunks: IDBObjectStore) => void
): Effect.Effect<void, StorageError> =>
  Effect.callback<void, StorageError>((resume) => {
    let tx: IDBTransaction | undefined
    try {
      tx = db.transaction([FILES, CHUNKS], "readwrite", { durability: "strict" })
      fill(tx.objectStore(FILES), tx.objectStore(CHUNKS))
    } catch (e) {
      // Requests already queued must not commit on their own: all or nothing.
      try {
        tx?.abort()
      } catch {
        // already finished
      }
      resume(Effect.fail(idbFailure(location, operation, e as NamedError)))
      return
    }
    tx.oncomplete = () => resume(Effect.void)
    tx.onabort = () => resume(Effect.fail(idbFailure(location, operation, tx.error)))
  })

/** The key range of every chunk of store `name` from index `first` on. */
export const chunkRange = (keys: typeof IDBKeyRange, name: string, first: number): IDBKeyRange => keys.bound([name, first], [name, Number.MAX_SAFE_INTEGER])
