/**
 * Export: the guest view of the open image (its whole backing chain) as a
 * standalone raw or qcow2 file, optionally compressed, without ever holding
 * the image in memory.
 *
 * Where the bytes go is a `FileSystemFileHandle`, written through its
 * `FileSystemWritableFileStream` (positioned writes, nothing kept in the
 * page):
 * - the File System Access API's `showSaveFilePicker` when the browser has
 *   it: the file lands where the user chose, written in place;
 * - otherwise a file in the origin private file system (OPFS), offered as a
 *   download of its disk-backed `File` when complete. Unlike a service
 *   worker stream this needs no second script or registration and has no
 *   lifetime limit, and unlike Blob parts built in the page it never asks
 *   the renderer to hold the data.
 *
 * A raw export writes the data extents straight into the file (zeros and
 * unallocated ranges are left as holes, the size set at the end). A qcow2
 * export is built by the toolkit's own writer in a scratch IndexedDB store
 * (the writer needs to read back its metadata, which a writable stream
 * cannot), then copied into the file sequentially and deleted.
 */
import { Effect } from "effect"
import { createImage, openImage, type Image, type OpenOptions } from "@qcow2/image"
import type { ClusterCodec } from "@qcow2/compress"
import { makeRuntimeCompressionPool } from "@qcow2/compress/runtime"
import { StorageOpener } from "@qcow2/storage"

/**
 * Compresses one cluster: the shape of `CompressionPool.compress` in
 * `@qcow2/compress` (and of `OpenOptions.compress`). Undefined = the
 * session's ClusterCodec on the page's thread.
 */
export type ClusterCompressor = NonNullable<OpenOptions["compress"]>

export type ExportFormat = "raw" | "qcow2"
export type ExportCompression = "none" | "zlib" | "zstd"

export interface ConvertOptions {
  readonly compression: ExportCompression
  readonly clusterSize: number
  readonly compressor: ClusterCompressor | undefined
  readonly signal: AbortSignal
  /** Guest bytes walked so far, of `total`. */
  readonly onProgress: (done: number, total: number) => void
}

/**
 * Bytes read from the source and written to the file per request. Each
 * request to a Blob or a file stream is a round trip to the browser
 * process: in Chromium here a 256 MiB picked file reads in ~0.7 s in 4 MiB
 * slices but ~1.2-6 s in 1 MiB slices, and OPFS writes take ~2.6 s in
 * 4 MiB pieces against ~3-4 s in 1 MiB pieces.
 */
export const CHUNK = 4 << 20

/** Guest bytes written into a new image between flushes: what a target in IndexedDB holds in memory at most. */
const FLUSH_EVERY = 32 << 20

/** The reason an export stopped because the user pressed Cancel. */
export class ExportCancelled extends Error {
  constructor() {
    super("Export cancelled.")
  }
}

const checkCancelled = (signal: AbortSignal) => Effect.suspend(() => (signal.aborted ? Effect.die(new ExportCancelled()) : Effect.void))

const isAllZero = (bytes: Uint8Array): boolean => {
  const words = bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : bytes
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false
  return true
}

/**
 * Calls `onData(offset, bytes)` for every range of `source` that holds data
 * (guest view: any layer of the chain), in `CHUNK` pieces aligned to
 * `alignment`, skipping ranges that read as zeros. The buffer is reused: a
 * callee that keeps the bytes must copy them.
 */
export const forEachData = <E, R>(
  source: Image,
  alignment: number,
  signal: AbortSignal,
  onProgress: (done: number, total: number) => void,
  onData: (offset: number, bytes: Uint8Array) => Effect.Effect<void, E, R>
): Effect.Effect<void, E | { readonly message: string }, R> =>
  Effect.gen(function* () {
    const total = source.virtualSize
    const buffer = new Uint8Array(CHUNK)
    let pos = 0
    while (pos < total) {
      yield* checkCancelled(signal)
      const status = yield* source.blockStatus(pos, Math.min(total - pos, 1 << 30))
      const length = Math.max(1, Math.min(status.length, total - pos))
      if (status.data) {
        // Whole aligned chunks: a compressed target takes whole clusters.
        const start = Math.floor(pos / alignment) * alignment
        const end = Math.min(total, Math.ceil((pos + length) / alignment) * alignment)
        for (let at = start; at < end; at += CHUNK) {
          yield* checkCancelled(signal)
          const piece = buffer.subarray(0, Math.min(CHUNK, end - at))
          yield* source.read(at, piece)
          for (let c = 0; c < piece.length; c += alignment) {
            const run = piece.subarray(c, Math.min(piece.length, c + alignment))
            if (!isAllZero(run)) {
              // Merge consecutive non-zero runs into one call.
              let runEnd = c + alignment
              while (runEnd < piece.length && !isAllZero(piece.subarray(runEnd, Math.min(piece.length, runEnd + alignment)))) runEnd += alignment
              yield* onData(at + c, piece.subarray(c, Math.min(piece.length, runEnd)))
              c = runEnd - alignment
            }
          }
          onProgress(Math.min(total, at + piece.length), total)
        }
        pos = end
      } else {
        pos += length
        onProgress(pos, total)
      }
    }
  })

/**
 * Copies the guest view of `source` into a new standalone qcow2 image
 * `target` (no backing file: an overlay is flattened, "committed" into a
 * self-contained image). Compressed exports write whole clusters with
 * `writeCompressed`, compressed by `compressor` or else by a Web Worker pool.
 */
export const convertToQcow2 = (source: Image, target: string, o: ConvertOptions): Effect.Effect<void, { readonly message: string }, StorageOpener | ClusterCodec> =>
  Effect.scoped(
    Effect.gen(function* () {
      yield* createImage(target, {
        size: source.virtualSize,
        clusterSize: o.clusterSize,
        ...(o.compression !== "none" ? { compressionType: o.compression } : {})
      })
      // Compressed exports run the codec on the Web Worker pool (the browser build of @qcow2/compress/runtime), alive for this export only.
      const compressor = o.compressor ?? (o.compression !== "none" ? (yield* makeRuntimeCompressionPool()).compress : undefined)
      const out = yield* openImage(target, { readOnly: false, format: "qcow2", ...(compressor !== undefined ? { compress: compressor } : {}) })
      const size = out.virtualSize
      let unflushed = 0
      const write = (offset: number, bytes: Uint8Array): Effect.Effect<void, { readonly message: string }> => {
        if (o.compression === "none") return out.write(offset, bytes)
        // Whole clusters compressed; the image's last partial cluster too (it ends the image).
        const end = offset + bytes.length
        const fullEnd = end === size ? end : Math.floor(end / out.clusterSize) * out.clusterSize
        return Effect.gen(function* () {
          if (fullEnd > offset) yield* out.writeCompressed(offset, bytes.subarray(0, fullEnd - offset))
          if (end > fullEnd) yield* out.write(fullEnd, bytes.subarray(fullEnd - offset))
        })
      }
      yield* forEachData(source, out.clusterSize, o.signal, o.onProgress, (offset, bytes) =>
        Effect.gen(function* () {
          yield* write(offset, bytes)
          // An IndexedDB store keeps its writes in memory until a flush commits them.
          unflushed += bytes.length
          if (unflushed >= FLUSH_EVERY) {
            unflushed = 0
            yield* out.flush()
          }
        })
      )
      yield* out.flush()
    })
  )

/** The guest view of `source` written into `file` as a raw image (holes where it reads as zeros). */
export const writeRaw = (source: Image, file: FileSystemWritableFileStream, o: Pick<ConvertOptions, "signal" | "onProgress">): Effect.Effect<void, { readonly message: string }> =>
  Effect.gen(function* () {
    yield* forEachData(source, 4096, o.signal, o.onProgress, (offset, bytes) =>
      Effect.tryPromise({ try: () => file.write({ type: "write", position: offset, data: bytes.slice() }), catch: writeFailure })
    )
    yield* Effect.tryPromise({ try: () => file.truncate(source.virtualSize), catch: writeFailure })
  })

const writeFailure = (e: unknown): { readonly message: string } => ({ message: `writing the file failed: ${e instanceof Error ? e.message : String(e)}` })

/** Copies the bytes of storage `name` (e.g. a library image) into `file` in order, `CHUNK` at a time. */
export const copyStore = (
  name: string,
  file: FileSystemWritableFileStream,
  signal: AbortSignal,
  onProgress: (done: number, total: number) => void
): Effect.Effect<void, { readonly message: string }, StorageOpener> =>
  Effect.scoped(
    Effect.gen(function* () {
      const store = yield* (yield* StorageOpener).open(name, { readOnly: true })
      const total = yield* store.size()
      for (let pos = 0; pos < total; pos += CHUNK) {
        yield* checkCancelled(signal)
        const piece = new Uint8Array(Math.min(CHUNK, total - pos))
        yield* store.read(pos, piece)
        yield* Effect.tryPromise({ try: () => file.write(piece), catch: writeFailure })
        onProgress(pos + piece.length, total)
      }
    })
  )

// ---- where the file goes -------------------------------------------------------------

/** A file being written, and how to finish it (close; for OPFS, offer the download). */
export interface ExportTarget {
  readonly writable: FileSystemWritableFileStream
  readonly finish: () => Promise<void>
  readonly abort: () => Promise<void>
  readonly via: "picker" | "download"
}

interface SaveFilePickerWindow {
  showSaveFilePicker?: (options: { suggestedName: string }) => Promise<FileSystemFileHandle>
}

/** Whether the browser can save straight into a file the user picks (File System Access API). */
export const hasSavePicker = (): boolean => typeof (globalThis as SaveFilePickerWindow).showSaveFilePicker === "function"

/** The OPFS folder holding the last exports until their downloads are done. */
const EXPORTS = "exports"

/**
 * Asks the user where to save (must run in the click's user activation,
 * before any other await).
 */
export const pickTarget = async (suggestedName: string): Promise<ExportTarget> => {
  const handle = await (globalThis as SaveFilePickerWindow).showSaveFilePicker!({ suggestedName })
  const writable = await handle.createWritable()
  return { writable, finish: () => writable.close(), abort: () => writable.abort(), via: "picker" }
}

/**
 * A file in the origin private file system, downloaded when complete. Older
 * exports are removed first (their downloads finished long ago).
 */
export const downloadTarget = async (fileName: string): Promise<ExportTarget> => {
  const root = await navigator.storage.getDirectory()
  await root.removeEntry(EXPORTS, { recursive: true }).catch(() => undefined)
  const dir = await root.getDirectoryHandle(EXPORTS, { create: true })
  const handle = await dir.getFileHandle(fileName, { create: true })
  const writable = await handle.createWritable({ keepExistingData: false })
  return {
    writable,
    via: "download",
    finish: async () => {
      await writable.close()
      const file = await handle.getFile()
      const link = document.createElement("a")
      link.href = URL.createObjectURL(file)
      link.download = fileName
      link.click()
      setTimeout(() => URL.revokeObjectURL(link.href), 60_000)
    },
    abort: async () => {
      await writable.abort().catch(() => undefined)
      await dir.removeEntry(fileName).catch(() => undefined)
    }
  }
}
