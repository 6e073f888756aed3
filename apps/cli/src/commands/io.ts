import { Effect } from "effect"
import type { Image, ImageFormat } from "@qcow2/image"
import { openNamed, type ImageEnv } from "../env.js"
import { CliFailure, strerror, usage } from "../errors.js"
import { runIoCommand } from "../io/registry.js"
import { eprint } from "../output.js"

/** qemu-io's cache modes (-t); writethrough, its default, flushes after every write. */
export const ioCacheMode = (mode: string | undefined): Effect.Effect<{ readonly writethrough: boolean }, CliFailure> => {
  switch (mode ?? "writethrough") {
    case "writethrough":
    case "directsync":
      return Effect.succeed({ writethrough: true })
    case "writeback":
    case "unsafe":
    case "none":
      return Effect.succeed({ writethrough: false })
    default:
      return Effect.fail(usage(`Invalid cache option: ${mode}`))
  }
}

/** The image with a flush after every change: a request is reported done only once it is durable. */
const writethrough = (image: Image): Image => {
  const flushed = <A>(effect: Effect.Effect<A, import("@qcow2/image").ImageError>) => Effect.tap(effect, () => image.flush())
  const wrapped: Image = Object.create(image)
  return Object.assign(wrapped, {
    write: (offset: number, data: Uint8Array) => flushed(image.write(offset, data)),
    writeZeroes: (offset: number, length: number, options?: { readonly unmap?: boolean }) => flushed(image.writeZeroes(offset, length, options)),
    writeCompressed: (offset: number, data: Uint8Array) => flushed(image.writeCompressed(offset, data)),
    discard: (offset: number, length: number) => flushed(image.discard(offset, length)),
    truncate: (size: number, options?: Parameters<Image["truncate"]>[1]) => flushed(image.truncate(size, options))
  })
}

export interface IoOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly readOnly: boolean
  readonly commands: ReadonlyArray<string>
  readonly passphrase?: Uint8Array
  /** `-U`: share the image with every other user (read-only opens; see OpenOptions.forceShare). */
  readonly forceShare?: boolean
  /** Flush after every write (qemu-io's default cache mode). */
  readonly writethrough: boolean
}

/** `qcow2 io`: qemu-io's -c commands, in order; exit 1 if any of them failed. */
export const runIo = (o: IoOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      // qemu-io prints the driver's own message ("can't open device X: Broken bitmap directory").
      const { image } = yield* openNamed(o.file, { readOnly: o.readOnly, format: o.format, passphrase: o.passphrase, forceShare: o.forceShare === true }).pipe(
        Effect.mapError(({ error }) => new CliFailure({ message: `can't open device ${o.file}: ${error.message}`, exitCode: 1 }))
      )
      let failed = false
      const target = o.writethrough && !o.readOnly ? writethrough(image) : image
      for (const line of o.commands) {
        const ok = yield* runIoCommand({ image: target }, line)
        if (!ok) failed = true
      }
      // qemu-io flushes when it closes the image, and a failure there fails the run.
      if (!o.readOnly) {
        const failure = yield* image.flush().pipe(
          Effect.as(undefined),
          Effect.catch((error) => Effect.succeed(error))
        )
        if (failure !== undefined) {
          eprint(`qcow2: Failed to flush the image: ${strerror(failure)}\n`)
          return 1
        }
      }
      return failed ? 1 : 0
    })
  )

