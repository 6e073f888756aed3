/**
 * `qcow2 serve`: exports an image over NBD, as qemu-nbd does (its options,
 * messages and exit codes). Serves until the last client has gone (or,
 * with -t, forever) or until SIGINT, SIGTERM or SIGHUP, which end it
 * normally: connections finish their requests in flight, the image is
 * flushed and closed, exit 0. A second signal ends the process at once.
 * Prints nothing on success unless --verbose is given.
 */
import * as os from "node:os"
import { Effect } from "effect"
import type { NbdExport } from "@qcow2/nbd"
import { listen, type ListenOptions } from "@qcow2/nbd/node"
import { openNamed, unsafeCacheFiles, type ImageEnv, type CliFormat } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import { eprint } from "../output.js"
import { programName } from "../progname.js"

export interface ServeOptions {
  readonly file: string
  readonly format?: CliFormat
  readonly readOnly: boolean
  readonly exportName: string
  readonly description?: string
  readonly listen: ListenOptions
  readonly allocationDepth: boolean
  /** qemu-nbd --cache: writeback (default), writethrough, directsync, none, unsafe. */
  readonly cache: "writeback" | "writethrough" | "directsync" | "none" | "unsafe"
  readonly verbose: boolean
  readonly passphrase?: Uint8Array
}

const SIGNALS: ReadonlyArray<NodeJS.Signals> = ["SIGINT", "SIGTERM", "SIGHUP"]

/**
 * The first stop signal. Once it has come, a second one ends the process
 * at once with 128 + its number, the status a shell reports for it.
 */
const stopSignal: Effect.Effect<NodeJS.Signals> = Effect.callback<NodeJS.Signals>((resume) => {
  const onSignal = (signal: NodeJS.Signals) => {
    for (const s of SIGNALS) process.off(s, onSignal)
    for (const s of SIGNALS) process.once(s, (again) => process.exit(128 + (os.constants.signals[again] ?? 0)))
    resume(Effect.succeed(signal))
  }
  for (const s of SIGNALS) process.on(s, onSignal)
  return Effect.sync(() => {
    for (const s of SIGNALS) process.off(s, onSignal)
  })
})

/** The NBD URI of an address, as nbdinfo and qemu take it. */
const uriOf = (address: { readonly host: string; readonly port: number } | { readonly path: string }, name: string): string =>
  "path" in address
    ? `nbd+unix:///${encodeURIComponent(name)}?socket=${address.path}`
    : `nbd://${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}/${encodeURIComponent(name)}`

/** Serves until the last client has gone (without -t) or a stop signal, even one that comes while the image opens. */
export const runServe = (o: ServeOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.raceFirst(serveUntilDone(o), Effect.as(stopSignal, 0))

const serveUntilDone = (o: ServeOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      if (o.cache === "unsafe") unsafeCacheFiles.add(o.file)
      const { image } = yield* openNamed(o.file, { readOnly: o.readOnly, format: o.format, passphrase: o.passphrase }).pipe(
        Effect.mapError(({ error, file }) => fail(`Failed to blk_new_open '${o.file}': Could not open '${file}': ${error.message}`))
      )
      const nbdExport: NbdExport = {
        name: o.exportName,
        image,
        readOnly: o.readOnly,
        allocationDepth: o.allocationDepth,
        writethrough: o.cache === "writethrough" || o.cache === "directsync",
        ...(o.description !== undefined ? { description: o.description } : {})
      }
      const maxConnections = o.listen.maxConnections ?? 1
      const listener = yield* listen({ exports: [nbdExport], multiConn: maxConnections !== 1 }, o.listen).pipe(
        Effect.mapError((error) => fail(error.message))
      )
      if (o.verbose) eprint(`${programName}: serving '${o.file}' on ${uriOf(listener.address, o.exportName)}\n`)
      yield* listener.done
      return 0
    })
  )
