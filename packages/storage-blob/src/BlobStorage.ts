import { Effect, Layer } from "effect"
import { BlockCache, checkRange, readOnlyError, StorageError, StorageOpener } from "@qcow2/storage"
import type { BlockStorageShape, StorageOpenerShape } from "@qcow2/storage"

/** Bytes per cached block: one qcow2 L2 table or refcount block of the default cluster size. */
const BLOCK = 64 * 1024

/** Reads at least this long go straight to the Blob, past the cache (bulk data, not metadata). */
const DIRECT = 1024 * 1024

/** Options of `makeBlobStorage` and `makeBlobStorageOpener`. */
export interface BlobStorageOptions {
  /** The store's `location` (a file's name). Default: the File's `name`, or "blob". */
  readonly name?: string
  /** Bytes of recently read blocks kept in memory (metadata re-reads). Default 8 MiB. */
  readonly cacheBytes?: number
}

const failure = (location: string, offset: number, length: number, error: unknown): StorageError =>
  new StorageError({
    reason: "Io",
    message: `read: ${location}: ${error instanceof Error ? error.message : String(error)}`,
    offset,
    length,
    location,
    errno: "EIO",
    cause: error
  })

/**
 * A read-only `BlockStorage` over a `Blob` or `File` (a file the user picked
 * or dropped): `slice().arrayBuffer()` per request, with a small LRU of 64 KiB
 * blocks so the metadata qcow2 reads again and again (header, L1, L2 and
 * refcount tables) is read once. Reads past the end are zeros, as for files.
 */
export const makeBlobStorage = (blob: Blob, options: BlobStorageOptions = {}): BlockStorageShape => {
  const location = options.name ?? ((blob as { name?: string }).name || "blob")
  const cache = new BlockCache(options.cacheBytes ?? 8 * 1024 * 1024)
  const size = blob.size

  const slice = (start: number, end: number): Effect.Effect<Uint8Array, StorageError> =>
    Effect.tryPromise({
      try: async () => new Uint8Array(await blob.slice(start, end).arrayBuffer()),
      catch: (e) => failure(location, start, end - start, e)
    })

  const block = (index: number): Effect.Effect<Uint8Array, StorageError> => {
    const hit = cache.get(index)
    if (hit !== undefined) return Effect.succeed(hit)
    return Effect.map(slice(index * BLOCK, Math.min(size, (index + 1) * BLOCK)), (bytes) => {
      cache.set(index, bytes)
      return bytes
    })
  }

  const read = (offset: number, into: Uint8Array): Effect.Effect<void, StorageError> => {
    const bad = checkRange(location, "read", offset, into.length)
    if (bad !== undefined) return Effect.fail(bad)
    const end = Math.min(size, offset + into.length)
    if (end < offset + into.length) into.fill(0, Math.max(0, end - offset))
    if (end <= offset) return Effect.void
    if (end - offset >= DIRECT) return Effect.map(slice(offset, end), (bytes) => into.set(bytes))
    return Effect.gen(function* () {
      for (let pos = offset; pos < end; ) {
        const index = Math.floor(pos / BLOCK)
        const within = pos - index * BLOCK
        const bytes = yield* block(index)
        const n = Math.min(bytes.length - within, end - pos)
        into.set(bytes.subarray(within, within + n), pos - offset)
        pos += n
      }
    })
  }

  const refuse = (operation: string) => () => Effect.fail(readOnlyError(location, operation))
  return {
    location,
    capabilities: { readOnly: true, discard: false, alignment: 1 },
    read,
    write: refuse("write"),
    discard: refuse("discard"),
    resize: refuse("resize"),
    flush: () => Effect.void,
    size: () => Effect.succeed(size)
  }
}

/**
 * An opener over a set of named Blobs (the files a user picked together: an
 * overlay and its backing file). A backing name resolves to the Blob of that
 * name; nothing else can be opened, and nothing opens writable.
 */
export const makeBlobStorageOpener = (files: ReadonlyMap<string, Blob>, options: Omit<BlobStorageOptions, "name"> = {}): StorageOpenerShape => ({
  open: (name, open) => {
    const blob = files.get(name)
    if (blob === undefined) {
      return Effect.fail(new StorageError({ reason: "NotFound", message: `open: ${name}: no such file was given`, location: name, errno: "ENOENT" }))
    }
    if (!open.readOnly || open.create === true) return Effect.fail(readOnlyError(name, "open"))
    return Effect.succeed(makeBlobStorage(blob, { ...options, name }))
  },
  resolve: (_referencedFrom, name) => name.slice(name.lastIndexOf("/") + 1)
})

/** {@link makeBlobStorageOpener} as a layer. */
export const blobStorageOpenerLayer = (files: ReadonlyMap<string, Blob>): Layer.Layer<StorageOpener> =>
  Layer.succeed(StorageOpener, makeBlobStorageOpener(files))
