import { Effect } from "effect"
import type { ImageFormat } from "@qcow2/image"
import { open, type ImageEnv } from "../env.js"
import { CliFailure } from "../errors.js"
import { runIoCommand } from "../io/registry.js"

export interface IoOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly readOnly: boolean
  readonly commands: ReadonlyArray<string>
  readonly passphrase?: Uint8Array
}

/** `qcow2 io`: qemu-io's -c commands, in order; exit 1 if any of them failed. */
export const runIo = (o: IoOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(o.file, { readOnly: o.readOnly, format: o.format, passphrase: o.passphrase }).pipe(
        Effect.mapError((e) => new CliFailure({ message: `can't open device ${o.file}: ${e.message}`, exitCode: 1 }))
      )
      let failed = false
      for (const line of o.commands) {
        const ok = yield* runIoCommand({ image }, line)
        if (!ok) failed = true
      }
      return failed ? 1 : 0
    })
  )
