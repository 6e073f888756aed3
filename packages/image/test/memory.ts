import { writeFileSync } from "node:fs"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { NodeClusterCodec } from "@qcow2/compress/node"
import type { ClusterCodec } from "@qcow2/compress"
import { makeMemoryStorageOpener, StorageOpener } from "@qcow2/storage"
import type { BlockStorageShape, StorageOpenerShape } from "@qcow2/storage"

/** An in-memory filesystem whose stores are wrapped (delays, recorders…) as they are opened. */
export function memoryFiles(wrap?: (name: string, storage: BlockStorageShape) => BlockStorageShape) {
  const files = new Map<string, BlockStorageShape>()
  const base = makeMemoryStorageOpener(files)
  const opener: StorageOpenerShape = {
    resolve: base.resolve,
    open: (name, options) => Effect.map(base.open(name, options), (s) => (wrap ? wrap(name, s) : s))
  }
  const layer = Layer.mergeAll(Layer.succeed(StorageOpener, opener), NodeClusterCodec.layer)
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | StorageOpener | ClusterCodec>): Promise<A> =>
    Effect.runPromise(Effect.scoped(effect).pipe(Effect.provide(layer)) as Effect.Effect<A, E>)
  /** Copies a store's bytes into a real file (for qemu-img). */
  const dump = (name: string, path: string) =>
    Effect.runPromise(
      Effect.gen(function* () {
        const storage = files.get(name)!
        const size = yield* storage.size()
        const bytes = new Uint8Array(size)
        yield* storage.read(0, bytes)
        writeFileSync(path, bytes)
      }) as Effect.Effect<void>
    )
  return { files, run, dump }
}

/** A store whose every read and write yields to other fibers first, so concurrent requests interleave. */
export function jittered(storage: BlockStorageShape, seed: number): BlockStorageShape {
  let x = seed >>> 0 || 1
  const next = () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return (x >>> 0) % 4
  }
  const pause = () => {
    const n = next()
    return n === 0 ? Effect.void : n === 1 ? Effect.yieldNow : Effect.sleep(`${n - 1} millis`)
  }
  return {
    ...storage,
    read: (offset, into) => Effect.andThen(pause(), storage.read(offset, into)),
    write: (offset, data) => {
      const copy = data.slice()
      return Effect.andThen(pause(), storage.write(offset, copy))
    },
    flush: () => Effect.andThen(pause(), storage.flush())
  }
}
