/**
 * `qcow2 bench`: qemu-img bench (qemu-img.c img_bench, QEMU 7.2). COUNT
 * requests of SIZE bytes go to the image through the library, DEPTH of
 * them in flight at once; request i starts where request i-1 did plus
 * STEP, wrapping at the end of the image. Prints what qemu-img prints and
 * the wall time of the requests alone (after the open, before the close).
 */
import { Effect, Latch } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { type CliFailure, errnoText, fail, strerror } from "../errors.js"
import { print } from "../output.js"
import { cFixed } from "../text/cformat.js"

export { benchOptions } from "./bench-options.js"

export interface BenchOptions {
  readonly file: string
  readonly format?: CliFormat
  readonly count: number
  readonly depth: number
  readonly bufferSize: number
  /** Already defaulted: 0 on the command line means the buffer size. */
  readonly step: number
  readonly offset: number
  readonly write: boolean
  readonly pattern: number
  /** Flush after every this many requests (0: never); write tests only. */
  readonly flushInterval: number
  /** Wait for the requests in flight before each flush (qemu-img's default; --no-drain turns it off). */
  readonly drainOnFlush: boolean
  /** Cache mode: writethrough flushes after every write, unsafe ignores flushes. */
  readonly cache: "writeback" | "writethrough" | "unsafe"
  readonly forceShare: boolean
}

/**
 * The requests, issued as qemu-img's bench_cb issues them: up to `depth`
 * in flight, a flush when the number of requests not yet issued is a
 * multiple of the flush interval (after the requests in flight drained,
 * unless --no-drain). Fails with qemu-img's "Failed request" at the first
 * error.
 */
export const runRequests = (image: Image, o: BenchOptions): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    const size = image.virtualSize
    // One buffer serves every request: writes all carry the pattern (as
    // qemu-img's do), what reads bring back is not looked at.
    const buffer = new Uint8Array(o.bufferSize).fill(o.write ? o.pattern : 0)
    const flush = o.cache === "unsafe" ? Effect.void : image.flush()
    const request = (at: number): Effect.Effect<void, ImageError | "EIO"> => {
      // The block layer refuses a request past the end with EIO before any driver sees it.
      if (at + o.bufferSize > size) return Effect.fail("EIO" as const)
      if (!o.write) return image.read(at, buffer)
      const written = image.write(at, buffer)
      return o.cache === "writethrough" ? Effect.andThen(written, image.flush()) : written
    }
    const failed = (e: ImageError | "EIO"): CliFailure => fail(`Failed request: ${e === "EIO" ? errnoText("EIO") : strerror(e)}`)
    // qemu-img reports a failed drained flush through the same callback as a request.
    const flushFailed = (e: ImageError): CliFailure => fail(`Failed request: ${strerror(e)}`)

    let notIssued = o.count
    let inFlight = 0
    let offset = o.offset
    /** Closed while the requests in flight drain before a flush (qemu-img's in_flush). */
    let drained: Latch.Latch | undefined

    const worker = Effect.gen(function* () {
      while (true) {
        if (drained !== undefined) yield* drained.await
        if (notIssued === 0) return
        const at = offset
        notIssued--
        inFlight++
        offset = size === 0 ? 0 : (offset + o.step) % size
        yield* Effect.mapError(request(at), failed)
        inFlight--
        // qemu-img: a flush is due when the number of requests not yet
        // issued is a multiple of the interval.
        if (o.flushInterval === 0 || notIssued % o.flushInterval !== 0) continue
        if (!o.drainOnFlush) {
          // --no-drain: the other requests go on while this flush runs.
          yield* Effect.mapError(flush, (e) => fail(`Failed flush request: ${strerror(e)}`))
          continue
        }
        if (drained === undefined) drained = Latch.makeUnsafe(false)
        if (inFlight > 0) continue
        yield* Effect.mapError(flush, flushFailed)
        const gate = drained
        drained = undefined
        yield* gate.open
      }
    })
    const workers = Math.max(1, Math.min(o.depth, o.count))
    yield* Effect.all(Array.from({ length: workers }, () => worker), { concurrency: "unbounded", discard: true })
  })

export const runBench = (o: BenchOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(o.file, { readOnly: !o.write, format: o.format, forceShare: o.forceShare })
      print(
        `Sending ${o.count} ${o.write ? "write" : "read"} requests, ${o.bufferSize} bytes each, ${o.depth} in parallel ` +
          `(starting at offset ${o.offset}, step size ${o.step})\n`
      )
      if (o.flushInterval > 0) print(`Sending flush every ${o.flushInterval} requests\n`)
      const start = performance.now()
      yield* runRequests(image, o)
      print(`Run completed in ${cFixed((performance.now() - start) / 1000, 3)} seconds.\n`)
      return 0
    })
  )
