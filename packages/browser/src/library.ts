/**
 * The images stored in IndexedDB, as Promises: list, rename, delete, and
 * the space the origin uses (what a library view of an app shows).
 */
import { Effect } from "effect"
import { ImageError } from "@qcow2/promise"
import { deleteIdbStore, formatIdbName, listIdbStores, parseIdbName, renameIdbStore, storageUsage, type IdbStoreInfo } from "@qcow2/storage-idb"
import type { StorageError } from "@qcow2/storage"

/** One stored image: its `idb://` name, size in bytes and chunk size. */
export interface StoredImage extends IdbStoreInfo {
  readonly location: string
}

const storageError = (e: StorageError) =>
  new ImageError(e.message, { reason: "Storage", location: e.location, ...(e.errno !== undefined ? { errno: e.errno } : {}), cause: e })

const run = <A>(effect: Effect.Effect<A, StorageError>): Promise<A> => Effect.runPromise(Effect.mapError(effect, storageError))

const parsed = (name: string) => {
  const n = parseIdbName(name)
  if (n === undefined) throw new ImageError(`${name}: not an idb://DATABASE/NAME name`, { reason: "InvalidArgument", location: name })
  return n
}

/** The images of IndexedDB database `database`. */
export const listImages = (database: string): Promise<ReadonlyArray<StoredImage>> =>
  run(Effect.map(listIdbStores(database), (stores) => stores.map((s) => ({ ...s, location: formatIdbName({ database, name: s.name }) }))))

/** Deletes the stored image `idb://DATABASE/NAME`. */
export const deleteImage = async (name: string): Promise<void> => {
  const n = parsed(name)
  await run(deleteIdbStore(n.database, n.name))
}

/** Renames a stored image within its database (`to` is the new NAME part, or a full `idb://` name of the same database). */
export const renameImage = async (name: string, to: string): Promise<void> => {
  const n = parsed(name)
  const target = to.startsWith("idb://") ? parsed(to) : { database: n.database, name: to }
  if (target.database !== n.database) throw new ImageError(`cannot rename ${name} into another database`, { reason: "InvalidArgument", location: name })
  await run(renameIdbStore(n.database, n.name, target.name))
}

/** Bytes the origin uses and may use (navigator.storage.estimate), where the browser tells. */
export const storageEstimate = (): Promise<{ readonly usage: number; readonly quota: number } | undefined> => Effect.runPromise(storageUsage())
