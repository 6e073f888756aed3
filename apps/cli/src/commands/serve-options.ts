/**
 * `qcow2 serve`'s command line checked as qemu-nbd checks its own, with
 * qemu-nbd's messages (qemu-nbd.c main): shared count, socket path, cache
 * mode, export name length, port, format.
 */
import { Effect } from "effect"
import type { Values } from "../cli/spec.js"
import type { serve } from "../cli/spec.js"
import { fail, type CliFailure } from "../errors.js"
import type { Secrets } from "../secrets.js"
import type { ServeOptions } from "./serve.js"

const CACHE_MODES = ["none", "writeback", "writethrough", "directsync", "unsafe"] as const

const isCacheMode = (mode: string): mode is ServeOptions["cache"] => (CACHE_MODES as ReadonlyArray<string>).includes(mode)

/** qemu_strtoi with base 0: decimal, 0x hex or 0 octal, the whole string. */
const parseInteger = (text: string): number | undefined => {
  const t = text.trim()
  const m = /^([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(t)
  if (m === null) return undefined
  const digits = m[2]!
  const value = digits.startsWith("0x") || digits.startsWith("0X") ? parseInt(digits, 16) : digits.startsWith("0") ? parseInt(digits, 8) : parseInt(digits, 10)
  const signed = m[1] === "-" ? -value : value
  return Number.isSafeInteger(signed) && Math.abs(signed) <= 2 ** 31 - 1 ? signed : undefined
}

export const serveOptions = (c: Values<typeof serve>, secrets: Secrets): Effect.Effect<ServeOptions, CliFailure> =>
  Effect.gen(function* () {
    let cache: ServeOptions["cache"] = "writeback"
    if (c.nocache && c.cache !== undefined) return yield* Effect.fail(fail("-n and --cache can only be specified once"))
    const mode = c.nocache ? "none" : c.cache
    if (mode !== undefined) {
      if (!isCacheMode(mode)) return yield* Effect.fail(fail(`Invalid cache mode \`${mode}'`))
      cache = mode
    }
    if (c.socket !== undefined && !c.socket.startsWith("/")) return yield* Effect.fail(fail("socket path must be absolute"))
    let shared = 1
    if (c.shared !== undefined) {
      const n = parseInteger(c.shared)
      if (n === undefined || n < 0) return yield* Effect.fail(fail(`Invalid shared device number '${c.shared}'`))
      shared = n
    }
    const exportName = c.exportName ?? ""
    if (new TextEncoder().encode(exportName).length > 4096) return yield* Effect.fail(fail(`export name '${exportName}' too long`))
    if (c.description !== undefined && new TextEncoder().encode(c.description).length > 4096) {
      return yield* Effect.fail(fail(`export description '${c.description}' too long`))
    }
    const host = c.bind ?? "0.0.0.0"
    let port = 10809
    if (c.port !== undefined) {
      const n = /^[0-9]+$/.test(c.port) ? Number(c.port) : NaN
      if (!(n >= 0 && n <= 65535)) {
        return yield* Effect.fail(fail(`address resolution failed for ${host}:${c.port}: Servname not supported for ai_socktype`))
      }
      port = n
    }
    if (c.imageOpts && c.format !== undefined) return yield* Effect.fail(fail("--image-opts and -f are mutually exclusive"))
    const format = c.format
    if (format !== undefined && format !== "qcow2" && format !== "raw" && format !== "luks") {
      return yield* Effect.fail(fail(`Failed to blk_new_open '${c.file}': Unknown driver '${format}'`))
    }
    return {
      file: c.file,
      readOnly: c.readOnly,
      exportName,
      listen: {
        ...(c.socket !== undefined ? { path: c.socket } : { host, port }),
        maxConnections: shared,
        persistent: c.persistent
      },
      allocationDepth: c.allocationDepth,
      cache,
      verbose: c.verbose,
      ...(format !== undefined ? { format } : {}),
      ...(c.description !== undefined ? { description: c.description } : {}),
      ...(secrets.passphrase !== undefined ? { passphrase: secrets.passphrase } : {})
    }
  })
