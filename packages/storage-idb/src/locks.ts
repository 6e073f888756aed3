import { Effect } from "effect"
import type { Scope } from "effect"
import { StorageError } from "@qcow2/storage"

/**
 * Two writers never share a store: a read-write open holds its store
 * exclusively, read-only opens share it. Within one JavaScript realm a
 * registry enforces this; across tabs and workers of one origin the Web
 * Locks API (`navigator.locks`, where the runtime has it) does, with
 * `ifAvailable` so that a busy store is refused at once, as QEMU refuses an
 * image another process holds, instead of waiting.
 */

/** Holders per IndexedDB factory (one per realm in a browser; tests make many) and store. */
const registries = new WeakMap<object, Map<string, { writers: number; readers: number }>>()

interface LockManagerLike {
  request(name: string, options: { mode: "exclusive" | "shared"; ifAvailable: boolean }, callback: (lock: unknown) => Promise<void>): Promise<void>
}

const lockManager = (): LockManagerLike | undefined =>
  (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks

const busy = (location: string, readOnly: boolean): StorageError =>
  new StorageError({
    reason: "Locked",
    message: `${location}: Failed to get "${readOnly ? "consistent read" : "write"}" lock: another user holds the store`,
    location,
    errno: "EAGAIN"
  })

/** Claims `location` for the scope: exclusively for a writer, shared for readers. */
export const claimStore = (factory: object, location: string, readOnly: boolean): Effect.Effect<void, StorageError, Scope.Scope> =>
  Effect.gen(function* () {
    let holders = registries.get(factory)
    if (holders === undefined) {
      holders = new Map()
      registries.set(factory, holders)
    }
    const registry = holders
    yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const held = registry.get(location) ?? { writers: 0, readers: 0 }
        if (held.writers > 0 || (!readOnly && held.readers > 0)) return Effect.fail(busy(location, readOnly))
        registry.set(location, readOnly ? { ...held, readers: held.readers + 1 } : { ...held, writers: 1 })
        return Effect.void
      }),
      () =>
        Effect.sync(() => {
          const held = registry.get(location)
          if (held === undefined) return
          const next = readOnly ? { ...held, readers: held.readers - 1 } : { ...held, writers: 0 }
          if (next.readers === 0 && next.writers === 0) registry.delete(location)
          else registry.set(location, next)
        })
    )
    const locks = lockManager()
    if (locks === undefined) return
    // The Web Lock is held while `release` is pending; the scope resolves it.
    let release!: () => void
    const released = new Promise<void>((resolve) => (release = resolve))
    let held!: Promise<void>
    const granted = yield* Effect.promise(
      () =>
        new Promise<boolean>((resolve) => {
          held = locks
            .request(`qcow2:${location}`, { mode: readOnly ? "shared" : "exclusive", ifAvailable: true }, (lock) => {
              resolve(lock !== null)
              return lock === null ? Promise.resolve() : released
            })
            .catch(() => resolve(false))
        })
    )
    if (!granted) {
      release()
      return yield* busy(location, readOnly)
    }
    // The lock manager frees the lock after the callback's promise settles:
    // wait for that, so that closing and reopening a store never races.
    yield* Effect.addFinalizer(() =>
      Effect.promise(() => {
        release()
        return held
      })
    )
  })
