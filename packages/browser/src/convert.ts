/**
 * `convert()` of the browser Promise API: `qemu-img convert` of an image
 * (URL, stored image or picked file) into an IndexedDB image, or exported
 * to a `WritableStream` (a File System Access API file, a streamed
 * download) without holding the image in memory: the image is written into
 * a scratch IndexedDB store, copied out in order in 1 MiB pieces, and the
 * scratch store deleted. Compression runs on the Web Worker pool.
 */
import { Effect } from "effect"
import { ImageError as EffectImageError } from "@qcow2/image"
import { AbortError, convertWith, publicErrors, type ConvertOptions, type ConvertProgress } from "@qcow2/promise"
import { deleteIdbStore, formatIdbName, openIdbStorage, parseIdbName } from "@qcow2/storage-idb"
import { callOpener, type PolicyOptions } from "./open.js"
import { runner } from "./platform.js"

/** Where an export is in its two steps: converting into the scratch store, then writing it out. */
export interface ExportProgress extends ConvertProgress {
  readonly phase: "convert" | "write"
}

export interface BrowserConvertOptions extends Omit<ConvertOptions, "onProgress">, PolicyOptions {
  /** Called after each chunk of each step. */
  readonly onProgress?: (progress: ExportProgress) => void
  /** IndexedDB database of an export's scratch store (default "qcow2-scratch"). */
  readonly scratchDatabase?: string
}

/** Bytes per write to the target stream. */
const PIECE = 1 << 20

const storageFailure = (location: string, message: string, cause: unknown) =>
  new EffectImageError({ reason: "Storage", message, location, cause })

/** Copies the scratch store into `writer` in order; the writer is left open. */
const copyOut = (scratch: string, writer: WritableStreamDefaultWriter<Uint8Array>, onProgress: BrowserConvertOptions["onProgress"]) => {
  const { database, name } = parseIdbName(scratch)!
  return Effect.scoped(
    Effect.gen(function* () {
      const store = yield* openIdbStorage(database, name, { readOnly: true })
      const size = yield* store.size()
      for (let at = 0; at < size; at += PIECE) {
        const piece = new Uint8Array(Math.min(PIECE, size - at))
        yield* store.read(at, piece)
        yield* Effect.tryPromise({
          try: () => writer.write(piece),
          catch: (cause) => storageFailure(scratch, `writing the export failed: ${cause instanceof Error ? cause.message : String(cause)}`, cause)
        })
        if (onProgress !== undefined) onProgress({ phase: "write", bytesDone: Math.min(size, at + PIECE), bytesTotal: size })
      }
    })
  ).pipe(Effect.mapError((e) => (e._tag === "ImageError" ? e : storageFailure(scratch, e.message, e))))
}

/**
 * Converts `source` into `target`, like `qemu-img convert [-f FMT] [-O
 * qcow2|raw] [-c] [-o …]`: an `idb://DATABASE/NAME` target is created (or
 * replaced) in IndexedDB; a WritableStream target receives the whole image
 * file and is closed when done (aborted on failure). Aborting through
 * `signal` rejects with AbortError.
 */
export async function convert(source: string | Blob, target: string | WritableStream<Uint8Array>, options: BrowserConvertOptions = {}): Promise<void> {
  const onProgress = options.onProgress
  const convertOptions: ConvertOptions = {
    ...options,
    onProgress: onProgress !== undefined ? (p) => onProgress({ ...p, phase: "convert" }) : undefined
  }
  if (typeof target === "string") {
    const { name, opener } = callOpener(source, { ...options, allow: [...(options.allow ?? []), target] })
    return convertWith(runner, name, target, convertOptions, opener)
  }
  const scratch = formatIdbName({ database: options.scratchDatabase ?? "qcow2-scratch", name: `export-${crypto.randomUUID()}` })
  const { name, opener } = callOpener(source, { ...options, allow: [...(options.allow ?? []), scratch] })
  const writer = target.getWriter()
  try {
    await convertWith(runner, name, scratch, convertOptions, opener)
    if (options.signal?.aborted === true) throw new AbortError(undefined, { cause: options.signal.reason })
    await runner.run(publicErrors(copyOut(scratch, writer, onProgress)), options.signal)
    await writer.close()
  } catch (e) {
    await writer.abort(e).catch(() => undefined)
    throw e
  } finally {
    const { database, name: store } = parseIdbName(scratch)!
    await Effect.runPromise(Effect.ignore(deleteIdbStore(database, store)))
  }
}
