/**
 * Opening an image whose file sits under QEMU's blkdebug filter: the
 * StorageOpener in force is wrapped so that the image file (and only it:
 * backing and data files open as they are, as blkdebug sits on the
 * format's own file) comes back as a blkdebug store with the rules.
 */
import { Effect } from "effect"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { makeBlkdebugStorage, type BlkdebugConfig } from "@qcow2/storage/blkdebug"

/** `inner`, except that `file` opens under a blkdebug filter with `config`. */
export const blkdebugOpener = (inner: StorageOpenerShape, file: string, config: BlkdebugConfig): StorageOpenerShape => ({
  open: (name, options) => (name === file ? Effect.map(inner.open(name, options), (storage) => makeBlkdebugStorage(storage, config)) : inner.open(name, options)),
  resolve: inner.resolve
})

/** Runs `effect` (which opens `file`) with `file` under blkdebug when `config` is given. */
export const withBlkdebug = <A, E, R>(file: string, config: BlkdebugConfig | undefined, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | StorageOpener> =>
  config === undefined
    ? effect
    : Effect.flatMap(StorageOpener, (opener) => Effect.provideService(effect, StorageOpener, blkdebugOpener(opener, file, config)))
