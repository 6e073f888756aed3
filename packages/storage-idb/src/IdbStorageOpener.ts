import { Effect, Layer } from "effect"
import { StorageError, StorageOpener } from "@qcow2/storage"
import type { StorageOpenerShape } from "@qcow2/storage"
import { CHUNKS, chunkRange, commit, FILES, openDatabase, request, type FileRecord } from "./database.js"
import { defaultEnvironment, openIdbStorage, type IdbEnvironment } from "./IdbStorage.js"

/** `idb://DATABASE/NAME`: a store NAME (which may contain '/') in IndexedDB database DATABASE. */
export interface IdbName {
  readonly database: string
  readonly name: string
}

const PREFIX = "idb://"

/** Splits an `idb://DATABASE/NAME` name; `undefined` when it is not one. */
export const parseIdbName = (text: string): IdbName | undefined => {
  if (!text.startsWith(PREFIX)) return undefined
  const rest = text.slice(PREFIX.length)
  const slash = rest.indexOf("/")
  if (slash <= 0 || slash === rest.length - 1) return undefined
  return { database: decodeURIComponent(rest.slice(0, slash)), name: rest.slice(slash + 1) }
}

/** The `idb://DATABASE/NAME` name of a store (the inverse of `parseIdbName`). */
export const formatIdbName = (n: IdbName): string => `${PREFIX}${encodeURIComponent(n.database)}/${n.name}`

/** Options of `makeIdbStorageOpener`. */
export interface IdbOpenerOptions {
  /** Bytes per chunk record of stores created through this opener. */
  readonly chunkSize?: number
  readonly environment?: IdbEnvironment
}

/**
 * Opens `idb://DATABASE/NAME` stores. A name found inside an image (its
 * backing file) resolves as QEMU resolves one against a file's directory:
 * `base.qcow2` named by `idb://db/vm/top.qcow2` is `idb://db/vm/base.qcow2`;
 * a full `idb://` name or URL is kept as it is (whether it may be opened is
 * the application's policy, not the opener's).
 */
export const makeIdbStorageOpener = (options: IdbOpenerOptions = {}): StorageOpenerShape => ({
  open: (text, open) => {
    const parsed = parseIdbName(text)
    if (parsed === undefined) {
      return Effect.fail(new StorageError({ reason: "NotFound", message: `${text}: not an idb://DATABASE/NAME name`, location: text, errno: "ENOENT" }))
    }
    return openIdbStorage(parsed.database, parsed.name, {
      ...open,
      ...(options.chunkSize !== undefined ? { chunkSize: options.chunkSize } : {}),
      ...(options.environment !== undefined ? { environment: options.environment } : {})
    })
  },
  resolve: (referencedFrom, name) => {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(name)) return name
    const from = parseIdbName(referencedFrom)
    if (from === undefined) return name
    const dir = from.name.includes("/") ? from.name.slice(0, from.name.lastIndexOf("/") + 1) : ""
    return formatIdbName({ database: from.database, name: name.startsWith("/") ? name.slice(1) : dir + name })
  }
})

/** The opener as a layer (default options). */
export const IdbStorageOpenerLayer: Layer.Layer<StorageOpener> = Layer.succeed(StorageOpener, makeIdbStorageOpener())

/** One store of a database, as the app's library lists it. */
export interface IdbStoreInfo {
  readonly name: string
  readonly size: number
  readonly chunkSize: number
}

const environmentOf = (location: string, environment: IdbEnvironment | undefined) =>
  environment !== undefined ? Effect.succeed(environment) : defaultEnvironment(location)

const withDatabase = <A>(database: string, environment: IdbEnvironment | undefined, use: (db: IDBDatabase, env: IdbEnvironment) => Effect.Effect<A, StorageError>) =>
  Effect.gen(function* () {
    const location = `${PREFIX}${database}`
    const env = yield* environmentOf(location, environment)
    return yield* Effect.acquireUseRelease(openDatabase(env.indexedDB, database, location), (db) => use(db, env), (db) => Effect.sync(() => db.close()))
  })

/** Every store of `database` with its size. */
export const listIdbStores = (database: string, environment?: IdbEnvironment): Effect.Effect<ReadonlyArray<IdbStoreInfo>, StorageError> =>
  withDatabase(database, environment, (db) =>
    Effect.gen(function* () {
      const files = () => db.transaction(FILES, "readonly").objectStore(FILES)
      const names = (yield* request(`${PREFIX}${database}`, "list", () => files().getAllKeys())) as string[]
      const records = (yield* request(`${PREFIX}${database}`, "list", () => files().getAll())) as FileRecord[]
      return names.map((name, i) => ({ name, size: records[i]!.size, chunkSize: records[i]!.chunkSize }))
    })
  )

/** Deletes store `name` and its chunks in one transaction. */
export const deleteIdbStore = (database: string, name: string, environment?: IdbEnvironment): Effect.Effect<void, StorageError> =>
  withDatabase(database, environment, (db, env) =>
    commit(db, `${PREFIX}${database}/${name}`, "delete", (files, chunks) => {
      files.delete(name)
      chunks.delete(chunkRange(env.IDBKeyRange, name, 0))
    })
  )

/**
 * Renames store `from` to `to` in one transaction (chunks are copied under
 * the new key; IndexedDB has no rename). Refuses to overwrite an existing store.
 */
export const renameIdbStore = (database: string, from: string, to: string, environment?: IdbEnvironment): Effect.Effect<void, StorageError> =>
  withDatabase(database, environment, (db, env) =>
    Effect.gen(function* () {
      const location = `${PREFIX}${database}/${from}`
      const files = () => db.transaction(FILES, "readonly").objectStore(FILES)
      const record = (yield* request(location, "rename", () => files().get(from))) as FileRecord | undefined
      if (record === undefined) return yield* new StorageError({ reason: "NotFound", message: `rename: ${location}: no such store`, location, errno: "ENOENT" })
      if ((yield* request(location, "rename", () => files().get(to))) !== undefined) {
        return yield* new StorageError({ reason: "Io", message: `rename: ${PREFIX}${database}/${to} already exists`, location, errno: "EEXIST" })
      }
      const chunks = () => db.transaction(CHUNKS, "readonly").objectStore(CHUNKS)
      const keys = (yield* request(location, "rename", () => chunks().getAllKeys(chunkRange(env.IDBKeyRange, from, 0)))) as Array<[string, number]>
      const values = (yield* request(location, "rename", () => chunks().getAll(chunkRange(env.IDBKeyRange, from, 0)))) as Uint8Array[]
      yield* commit(db, location, "rename", (fileStore, chunkStore) => {
        chunkStore.delete(chunkRange(env.IDBKeyRange, from, 0))
        keys.forEach(([, index], i) => chunkStore.put(values[i]!, [to, index]))
        fileStore.delete(from)
        fileStore.put(record, to)
      })
    })
  )

/** Bytes this origin uses and may use (navigator.storage.estimate), where the runtime can tell. */
export const storageUsage = (): Effect.Effect<{ readonly usage: number; readonly quota: number } | undefined> =>
  Effect.promise(async () => {
    const storage = (globalThis as { navigator?: { storage?: { estimate?: () => Promise<{ usage?: number; quota?: number }> } } }).navigator?.storage
    if (storage?.estimate === undefined) return undefined
    const e = await storage.estimate()
    return { usage: e.usage ?? 0, quota: e.quota ?? 0 }
  })
