/**
 * `convert()`: the guest view of one image copied into a new qcow2 or raw
 * image, as `qemu-img convert` does, written over the Image API (the CLI's
 * convert writes raw targets through its own file descriptors and prints
 * qemu-img's progress and messages; this is the library's own pipeline).
 *
 * The source is read in aligned 2 MiB chunks by a few concurrent workers.
 * A chunk the source reports as all zeros is skipped (a new target reads
 * as zeros already); otherwise it is read and written in runs, leaving out
 * zero blocks of the target's granularity (its cluster size, or
 * `sparseSize` for raw). With `compress`, whole target clusters go through
 * `writeCompressed`, compressed on the runtime's pool (worker threads under
 * Node, Web Workers in a browser: `@qcow2/compress/runtime`).
 */
import { Effect, Ref } from "effect"
import { makeRuntimeCompressionPool } from "@qcow2/compress/runtime"
import { isZero, openImage, ImageError as EffectImageError, type Image } from "@qcow2/image"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { createEffect, createRaw } from "./internal/create.js"
import { AbortError } from "./errors.js"
import { inputFormat, outputFormat } from "./internal/arguments.js"
import type { ConvertOptions } from "./options.js"
import { passphraseBytes, publicErrors, type Runner } from "./runtime.js"

/** Bytes per request; a multiple of every qcow2 cluster size, so chunks stay cluster aligned. */
const CHUNK = 2 * 1024 * 1024

const invalid = (message: string, location: string) => new EffectImageError({ reason: "InvalidArgument", message, location })

/** Non-zero runs of `buf`, in blocks of `granularity` bytes: a run starts and ends on a block edge (or the end). */
const dataRuns = (buf: Uint8Array, granularity: number): Array<readonly [number, number]> => {
  const runs: Array<[number, number]> = []
  let runStart = -1
  for (let pos = 0; pos < buf.length; pos += granularity) {
    if (isZero(buf.subarray(pos, Math.min(buf.length, pos + granularity)))) {
      if (runStart >= 0) runs.push([runStart, pos])
      runStart = -1
    } else if (runStart < 0) {
      runStart = pos
    }
  }
  if (runStart >= 0) runs.push([runStart, buf.length])
  return runs
}

/** Whether the source reads as zeros throughout [offset, offset + length). */
const allZero = (source: Image, offset: number, length: number): Effect.Effect<boolean, EffectImageError> =>
  Effect.gen(function* () {
    let at = offset
    while (at < offset + length) {
      const status = yield* source.blockStatus(at, offset + length - at)
      if (!status.zero) return false
      at += Math.max(1, status.length)
    }
    return true
  })

const convertEffect = (source: string, target: string, o: ConvertOptions, targetProblem: string | undefined) =>
  Effect.scoped(
    Effect.gen(function* () {
      yield* inputFormat(source, o.format)
      yield* outputFormat(target, o.outFormat, ["raw", "qcow2"], (format) => `Unknown file format '${format}'`)
      const outFormat = o.outFormat ?? "raw"
      if (targetProblem !== undefined) return yield* invalid(targetProblem, target)
      if (o.compress === true && outFormat !== "qcow2") return yield* invalid("Compression not supported for this file format", target)
      const sparseSize = o.sparseSize ?? 4096
      if (!Number.isSafeInteger(sparseSize) || sparseSize < 0 || sparseSize % 512 !== 0) {
        return yield* invalid(`Invalid sparse size ${sparseSize}: a multiple of 512 is required`, target)
      }
      const parallel = o.parallel ?? 8
      if (!Number.isSafeInteger(parallel) || parallel < 1 || parallel > 16) return yield* invalid("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16", target)

      const src = yield* openImage(source, {
        readOnly: true,
        ...(o.format !== undefined ? { format: o.format } : {}),
        ...(o.passphrase !== undefined ? { passphrase: passphraseBytes(o.passphrase) } : {})
      })
      const total = src.virtualSize
      if (outFormat === "raw") {
        yield* createRaw(target, total, "off")
      } else {
        yield* createEffect(target, { ...o.targetOptions, format: "qcow2", size: total })
      }
      const pool = o.compress === true ? yield* makeRuntimeCompressionPool({}) : undefined
      const encrypt = outFormat === "qcow2" ? o.targetOptions?.encrypt : undefined
      const dst = yield* openImage(target, {
        readOnly: false,
        format: outFormat,
        ...(encrypt !== undefined ? { passphrase: passphraseBytes(encrypt.passphrase) } : {}),
        ...(pool !== undefined ? { compress: (type: 0 | 1, cluster: Uint8Array, level: number | undefined) => pool.compress(type, cluster, level) } : {})
      })
      const granularity = outFormat === "qcow2" ? dst.clusterSize : Math.max(512, sparseSize)
      const writeRun = (offset: number, data: Uint8Array) => (pool !== undefined ? dst.writeCompressed(offset, data) : dst.write(offset, data))

      const next = yield* Ref.make(0)
      const done = yield* Ref.make(0)
      const worker = Effect.gen(function* () {
        for (;;) {
          const offset = yield* Ref.getAndUpdate(next, (n) => n + CHUNK)
          if (offset >= total) return
          const length = Math.min(CHUNK, total - offset)
          // A raw source's block status would read the data to find zeros: read it once, here.
          if (src.format === "raw" || !(yield* allZero(src, offset, length))) {
            const buffer = new Uint8Array(length)
            yield* src.read(offset, buffer)
            // With sparseSize 0 (raw) every byte is written, as qemu-img -S 0.
            const runs = outFormat === "raw" && sparseSize === 0 ? [[0, length] as const] : dataRuns(buffer, granularity)
            for (const [start, end] of runs) yield* writeRun(offset + start, buffer.subarray(start, end))
          }
          const bytesDone = yield* Ref.updateAndGet(done, (n) => n + length)
          if (o.onProgress !== undefined) {
            const report = o.onProgress
            yield* Effect.sync(() => report({ bytesDone, bytesTotal: total }))
          }
        }
      })
      yield* Effect.all(Array.from({ length: parallel }, () => worker), { concurrency: "unbounded", discard: true })
      yield* dst.flush()
    })
  )

/**
 * Converts `source` (any name and format the platform opens) into a new
 * image at `target` (replaced if it exists), like
 * `qemu-img convert [-f FMT] [-O qcow2|raw] [-c] [-o …] SOURCE TARGET`.
 * Aborting through `signal` closes both images and rejects with
 * AbortError; the target is left as far as it got (consistent, since it is
 * flushed and closed), as qemu-img leaves it when interrupted. `opener`,
 * when given, opens both images instead of the platform's.
 */
export async function convertWith(runner: Runner, source: string, target: string, options: ConvertOptions = {}, opener?: StorageOpenerShape): Promise<void> {
  const signal = options.signal
  if (signal?.aborted === true) throw new AbortError(undefined, { cause: signal.reason })
  const effect = convertEffect(source, target, options, runner.platform.targetProblem(target))
  await runner.run(publicErrors(opener !== undefined ? Effect.provideService(effect, StorageOpener, opener) : effect), signal)
}
