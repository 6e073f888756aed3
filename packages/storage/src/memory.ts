import { Effect, Layer } from "effect"
import type { BlockStorageShape, OpenOptions, StorageOpenerShape } from "./BlockStorage.js"
import { BlockStorage, StorageOpener, writeNowFor } from "./BlockStorage.js"
import { StorageError } from "./errors.js"
import { checkRange, checkSize, closedError, readOnlyError } from "./validate.js"

/**
 * Page size of the in-memory backend. Only pages that were written exist, so
 * a huge virtual store with a few writes costs a few pages; holes read as zeros.
 */
export const MEMORY_PAGE_SIZE = 65536

/** Options of {@link makeMemoryStorage}. */
export interface MemoryStorageOptions {
  /** Initial content (copied; all-zero pages are not stored). Default: empty. */
  readonly initial?: Uint8Array
  /** Reject write, resize and discard with reason `ReadOnly`. */
  readonly readOnly?: boolean
  /** The store's `location`. Default `"memory"`. */
  readonly name?: string
  /**
   * Whether `discard` releases pages (and so reads back zeros). Default true;
   * false makes `discard` a no-op, like a backend that cannot punch holes.
   */
  readonly discard?: boolean
}

const isZero = (bytes: Uint8Array): boolean => {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0) return false
  }
  return true
}

/**
 * An in-memory, sparse {@link BlockStorageShape}: 64 KiB pages in a Map.
 *
 * Invariant: bytes of stored pages at or past `size` are zero, so reads never
 * look at `size` and a grow after a shrink exposes zeros.
 */
export const makeMemoryStorage = (options: MemoryStorageOptions = {}): BlockStorageShape => {
  const location = options.name ?? "memory"
  const readOnly = options.readOnly ?? false
  const releases = options.discard ?? true
  const pages = new Map<number, Uint8Array>()
  let size = 0

  const copyIn = (offset: number, data: Uint8Array): void => {
    let done = 0
    let pos = offset
    while (done < data.length) {
      const index = Math.floor(pos / MEMORY_PAGE_SIZE)
      const inPage = pos - index * MEMORY_PAGE_SIZE
      const n = Math.min(MEMORY_PAGE_SIZE - inPage, data.length - done)
      let page = pages.get(index)
      if (page === undefined) {
        page = new Uint8Array(MEMORY_PAGE_SIZE)
        pages.set(index, page)
      }
      page.set(data.subarray(done, done + n), inPage)
      done += n
      pos += n
    }
  }

  const copyOut = (offset: number, into: Uint8Array): void => {
    let done = 0
    let pos = offset
    while (done < into.length) {
      const index = Math.floor(pos / MEMORY_PAGE_SIZE)
      const inPage = pos - index * MEMORY_PAGE_SIZE
      const n = Math.min(MEMORY_PAGE_SIZE - inPage, into.length - done)
      const page = pages.get(index)
      if (page === undefined) into.fill(0, done, done + n)
      else into.set(page.subarray(inPage, inPage + n), done)
      done += n
      pos += n
    }
  }

  /** Zeroes [start, end): whole pages are dropped, partial ones cleared. */
  const zeroRange = (start: number, end: number): void => {
    let pos = start
    while (pos < end) {
      const index = Math.floor(pos / MEMORY_PAGE_SIZE)
      const inPage = pos - index * MEMORY_PAGE_SIZE
      const n = Math.min(MEMORY_PAGE_SIZE - inPage, end - pos)
      if (n === MEMORY_PAGE_SIZE) pages.delete(index)
      else pages.get(index)?.fill(0, inPage, inPage + n)
      pos += n
    }
  }

  const truncate = (newSize: number): void => {
    if (newSize < size) {
      const firstDropped = Math.ceil(newSize / MEMORY_PAGE_SIZE)
      for (const index of pages.keys()) {
        if (index >= firstDropped) pages.delete(index)
      }
      const tail = newSize % MEMORY_PAGE_SIZE
      if (tail !== 0) pages.get(firstDropped - 1)?.fill(0, tail)
    }
    size = newSize
  }

  const write = (offset: number, data: Uint8Array): void => {
    if (data.length === 0) return
    copyIn(offset, data)
    if (offset + data.length > size) size = offset + data.length
  }

  const writeLater: BlockStorageShape["write"] = (offset, data) => {
    const invalid = checkRange(location, "write", offset, data.length)
    if (invalid !== undefined) return Effect.fail(invalid)
    if (readOnly) return Effect.fail(readOnlyError(location, "write", offset, data.length))
    return Effect.sync(() => write(offset, data))
  }

  if (options.initial !== undefined) {
    const initial = options.initial
    for (let start = 0; start < initial.length; start += MEMORY_PAGE_SIZE) {
      const chunk = initial.subarray(start, Math.min(start + MEMORY_PAGE_SIZE, initial.length))
      if (!isZero(chunk)) copyIn(start, chunk)
    }
    size = initial.length
  }

  return {
    location,
    capabilities: { readOnly, discard: releases && !readOnly, alignment: 1 },
    read: (offset, into) => {
      const invalid = checkRange(location, "read", offset, into.length)
      if (invalid !== undefined) return Effect.fail(invalid)
      return Effect.sync(() => copyOut(offset, into))
    },
    write: writeLater,
    ...(readOnly
      ? {}
      : {
          writeNow: writeNowFor(writeLater, (offset, data) => {
            const invalid = checkRange(location, "write", offset, data.length)
            if (invalid !== undefined) return invalid
            write(offset, data)
            return true
          })
        }),
    flush: () => Effect.void,
    size: () => Effect.sync(() => size),
    resize: (newSize) => {
      const invalid = checkSize(location, newSize)
      if (invalid !== undefined) return Effect.fail(invalid)
      if (readOnly) return Effect.fail(readOnlyError(location, "resize", newSize))
      return Effect.sync(() => truncate(newSize))
    },
    discard: (offset, length) => {
      const invalid = checkRange(location, "discard", offset, length)
      if (invalid !== undefined) return Effect.fail(invalid)
      if (readOnly) return Effect.fail(readOnlyError(location, "discard", offset, length))
      if (!releases) return Effect.void
      return Effect.sync(() => zeroRange(offset, Math.min(offset + length, size)))
    }
  }
}

/**
 * A view of `storage` that rejects write, resize and discard with reason
 * `ReadOnly` (reads, size and flush pass through).
 */
export const readOnlyView = (storage: BlockStorageShape): BlockStorageShape => {
  if (storage.capabilities.readOnly) return storage
  const location = storage.location
  return {
    location,
    capabilities: { ...storage.capabilities, readOnly: true, discard: false },
    read: storage.read,
    write: (offset, data) =>
      Effect.fail(checkRange(location, "write", offset, data.length) ??
        readOnlyError(location, "write", offset, data.length)),
    flush: storage.flush,
    size: storage.size,
    resize: (newSize) => Effect.fail(checkSize(location, newSize) ?? readOnlyError(location, "resize", newSize)),
    discard: (offset, length) =>
      Effect.fail(checkRange(location, "discard", offset, length) ??
        readOnlyError(location, "discard", offset, length))
  }
}

/**
 * A handle on `storage` that fails every operation with reason `Closed` once
 * `isClosed()` returns true: catches use after the opening scope ended.
 */
const closable = (storage: BlockStorageShape, isClosed: () => boolean): BlockStorageShape => {
  const location = storage.location
  const guard = <A>(operation: string, run: () => Effect.Effect<A, StorageError>): Effect.Effect<A, StorageError> =>
    Effect.suspend(() => (isClosed() ? Effect.fail(closedError(location, operation)) : run()))
  return {
    location,
    capabilities: storage.capabilities,
    read: (offset, into) => guard("read", () => storage.read(offset, into)),
    write: (offset, data) => guard("write", () => storage.write(offset, data)),
    flush: () => guard("flush", storage.flush),
    size: () => guard("size", storage.size),
    resize: (newSize) => guard("resize", () => storage.resize(newSize)),
    discard: (offset, length) => guard("discard", () => storage.discard(offset, length))
  }
}

/** Layers providing {@link BlockStorage} from memory. */
export const MemoryStorage = {
  /** A fresh in-memory store each time the layer is built. */
  layer: (options: MemoryStorageOptions = {}): Layer.Layer<BlockStorage> =>
    Layer.sync(BlockStorage, () => makeMemoryStorage(options))
} as const

/**
 * Normalises a POSIX-like name: collapses `//`, `.` and `..` (a `..` above
 * the root of an absolute name is dropped; above a relative name it is kept).
 */
export const normalizeName = (name: string): string => {
  const absolute = name.startsWith("/")
  const parts: Array<string> = []
  for (const part of name.split("/")) {
    if (part === "" || part === ".") continue
    if (part === "..") {
      if (parts.length > 0 && parts[parts.length - 1] !== "..") parts.pop()
      else if (!absolute) parts.push("..")
      continue
    }
    parts.push(part)
  }
  const joined = parts.join("/")
  return absolute ? `/${joined}` : (joined === "" ? "." : joined)
}

/**
 * Resolves `name` against the directory of `referencedFrom` (QEMU resolves a
 * backing file name relative to the overlay's directory); absolute names are
 * returned normalised but otherwise unchanged.
 */
export const resolveName = (referencedFrom: string, name: string): string => {
  if (name.startsWith("/")) return normalizeName(name)
  const slash = referencedFrom.lastIndexOf("/")
  return normalizeName(slash < 0 ? name : `${referencedFrom.slice(0, slash + 1)}${name}`)
}

/**
 * A {@link StorageOpenerShape} over a named in-memory filesystem. `files`
 * (shared, not copied) maps normalised names to stores; `create` adds a fresh
 * memory store under the normalised name. A store opened read-only is a
 * {@link readOnlyView}; every opened handle fails with reason `Closed` after
 * its scope ends, while the store itself stays in `files`.
 */
export const makeMemoryStorageOpener = (
  files: Map<string, BlockStorageShape> = new Map()
): StorageOpenerShape => ({
  resolve: resolveName,
  open: (name: string, options: OpenOptions) =>
    Effect.gen(function*() {
      const key = normalizeName(name)
      let storage = files.get(name) ?? files.get(key)
      if (storage === undefined) {
        if (options.create !== true) {
          return yield* new StorageError({ reason: "NotFound", message: `${name}: no such store`, location: name })
        }
        storage = makeMemoryStorage({ name: key })
        files.set(key, storage)
      } else if (options.truncate === true) {
        if (options.readOnly) {
          return yield* readOnlyError(storage.location, "truncate")
        }
        yield* storage.resize(0)
      }
      const view = options.readOnly ? readOnlyView(storage) : storage
      const handle = yield* Effect.acquireRelease(
        Effect.sync(() => ({ closed: false })),
        (state) => Effect.sync(() => { state.closed = true })
      )
      return closable(view, () => handle.closed)
    })
})

/** Layers providing {@link StorageOpener} over an in-memory filesystem. */
export const MemoryStorageOpener = {
  /** An opener over `files` (a new empty filesystem by default, per build). */
  layer: (files?: Map<string, BlockStorageShape>): Layer.Layer<StorageOpener> =>
    Layer.sync(StorageOpener, () => makeMemoryStorageOpener(files ?? new Map()))
} as const
