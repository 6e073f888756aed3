/**
 * What each subcommand does with its parsed values: validation in
 * qemu-img's words, then the command module, loaded on demand so that a
 * command does not pay for the code of the others.
 */
import { Cause, Effect, Layer, Option } from "effect"
import type { ImageFormat } from "@qcow2/image"
import { cipherLayer, envLayer, imageOptions, type ImageEnv } from "../env.js"
import { CliFailure, describeCause, fail, usage } from "../errors.js"
import { normalizeArgv } from "../argv.js"
import { eprint, exitStatus } from "../output.js"
import { parseSecrets, type Secrets } from "../secrets.js"
import { parseSize } from "../text/strtosz.js"
import type { Parsed } from "./spec.js"

/**
 * Runs a command body: sets the exit code, reports failures and defects
 * briefly; an interruption passes through. `ciphers`: the command line
 * carries secrets, so encrypted images may be opened or created (loads
 * node:crypto kernels).
 */
export const execute = (body: Effect.Effect<number, CliFailure, ImageEnv>, ciphers: boolean): Effect.Effect<void> =>
  body.pipe(
    Effect.provide(ciphers ? Layer.merge(envLayer, cipherLayer) : envLayer),
    Effect.catchCause((cause) =>
      // An interruption (a signal, see main.ts) is not a failure to report:
      // it goes on to the runner, which ends the process accordingly.
      Cause.hasInterruptsOnly(cause) ? Effect.interrupt : Effect.sync(() => {
        const failure = Cause.findErrorOption(cause)
        if (Option.isSome(failure) && failure.value instanceof CliFailure) {
          const f = failure.value
          eprint(`qcow2: ${f.message}\n${f.usage === true ? "Try 'qcow2 --help' for more information\n" : ""}`)
          return f.exitCode
        }
        eprint(`qcow2: internal error: ${describeCause(cause)}\n`)
        return 1
      })
    ),
    Effect.map((code) => {
      exitStatus.code = code
    })
  )

const imageFormat = (v: string | undefined): Effect.Effect<ImageFormat | undefined, CliFailure> => {
  if (v === undefined || v === "qcow2" || v === "raw") return Effect.succeed(v)
  return Effect.fail(fail(`Unknown driver '${v}'`))
}

const secretsOf = (c: {
  readonly object: ReadonlyArray<string>
  readonly imageOpts: boolean
  readonly passphraseFile: string | undefined
}): Effect.Effect<Secrets, CliFailure> => {
  const r = parseSecrets(c.object, c.passphraseFile)
  if (!r.ok) return Effect.fail(fail(r.message))
  if (c.imageOpts) {
    imageOptions.enabled = true
    imageOptions.secrets = r.secrets.byId
  }
  return Effect.succeed(r.secrets)
}

const sizeArg = (text: string, what: string): Effect.Effect<number, CliFailure> => {
  const r = parseSize(text)
  if (r.ok) return Effect.succeed(r.value)
  return Effect.fail(
    fail(
      r.reason === "range"
        ? `Invalid ${what} specified. Must be between 0 and 9223372036854775807.`
        : `Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for\nkilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`
    )
  )
}

/** The command line carries secrets (every command has --object and all but create --passphrase-file). */
export const hasSecrets = (p: Parsed): boolean =>
  p.values.object.length > 0 || p.values.passphraseFile !== undefined

/** The body of a parsed command line. */
export const commandBody = (p: Parsed): Effect.Effect<number, CliFailure, ImageEnv> => {
  switch (p.command) {
    case "info": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const { runInfo } = yield* Effect.promise(() => import("../commands/info.js"))
        return yield* runInfo({ file: c.file, format, output: c.output as "human" | "json", backingChain: c.backingChain, passphrase: secrets.passphrase })
      })
    }
    case "map": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const startOffset = c.startOffset !== undefined ? yield* sizeArg(c.startOffset, "start offset") : undefined
        const maxLength = c.maxLength !== undefined ? yield* sizeArg(c.maxLength, "max length") : undefined
        const { runMap } = yield* Effect.promise(() => import("../commands/map.js"))
        return yield* runMap({
          file: c.file,
          format,
          output: c.output as "human" | "json",
          ...(startOffset !== undefined ? { startOffset } : {}),
          ...(maxLength !== undefined ? { maxLength } : {}),
          passphrase: secrets.passphrase
        })
      })
    }
    case "check": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const repair = c.repair
        if (repair !== undefined && repair !== "leaks" && repair !== "all") {
          return yield* Effect.fail(usage(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`))
        }
        const format = yield* imageFormat(c.format)
        const { runCheck } = yield* Effect.promise(() => import("../commands/check.js"))
        return yield* runCheck({
          file: c.file,
          format,
          output: c.output as "human" | "json",
          quiet: c.quiet,
          ...(repair !== undefined ? { repair } : {}),
          passphrase: secrets.passphrase
        })
      })
    }
    case "compare": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format1 = yield* imageFormat(c.format)
        const format2 = yield* imageFormat(c.format2)
        const { runCompare } = yield* Effect.promise(() => import("../commands/compare.js"))
        return yield* runCompare({
          file1: c.file1,
          file2: c.file2,
          format1,
          format2,
          strict: c.strict,
          progress: c.progress,
          quiet: c.quiet,
          passphrase: secrets.passphrase
        }).pipe(Effect.mapError((e) => (e.exitCode === 1 && e.message.startsWith("Could not open") ? new CliFailure({ ...e, exitCode: 2 }) : e)))
      })
    }
    case "create": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf({ ...c, imageOpts: false })
        const { runCreate } = yield* Effect.promise(() => import("../commands/create.js"))
        return yield* runCreate({
          file: c.file,
          format: c.format,
          options: c.options,
          unsafe: c.unsafe,
          quiet: c.quiet,
          secrets,
          ...(c.size !== undefined ? { size: c.size } : {}),
          ...(c.backing !== undefined ? { backingFile: c.backing } : {}),
          ...(c.backingFormat !== undefined ? { backingFormat: c.backingFormat } : {})
        })
      })
    }
    case "convert": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const target = c.targetFormat
        if (target !== "raw" && target !== "qcow2") return yield* Effect.fail(fail(`Unknown file format '${target}'`))
        if (c.skipBrokenBitmaps && !c.bitmaps) return yield* Effect.fail(fail("Use of --skip-broken-bitmaps requires --bitmaps"))
        if (c.targetIsZero && !c.noCreate) return yield* Effect.fail(fail("--target-is-zero requires use of -n flag"))
        let sparseSize = 4096
        const s = c.sparseSize
        if (s !== undefined) {
          const r = parseSize(s)
          if (!r.ok) return yield* sizeArg(s, "buffer size for sparse output")
          if (r.value % 512 !== 0 || r.value > 16 * 1024 * 1024) {
            return yield* Effect.fail(
              fail(
                "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output)."
              )
            )
          }
          sparseSize = r.value
        }
        let parallel = 8
        const m = c.parallel
        if (m !== undefined) {
          parallel = Number(m)
          if (!Number.isInteger(parallel) || parallel < 1 || parallel > 16) {
            return yield* Effect.fail(fail("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"))
          }
        }
        const format = yield* imageFormat(c.format)
        const { runConvert } = yield* Effect.promise(() => import("../commands/convert.js"))
        return yield* runConvert({
          sources: c.files.slice(0, -1),
          target: c.files[c.files.length - 1]!,
          format,
          outFormat: target,
          options: c.options,
          compress: c.compress,
          sparseSize,
          progress: c.progress,
          quiet: c.quiet,
          skipCreate: c.noCreate,
          targetIsZero: c.targetIsZero,
          parallel,
          secrets,
          cache: c.cache ?? "unsafe",
          bitmaps: c.bitmaps,
          skipBrokenBitmaps: c.skipBrokenBitmaps,
          ...(c.backing !== undefined ? { backingFile: c.backing } : {}),
          ...(c.backingFormat !== undefined ? { backingFormat: c.backingFormat } : {})
        })
      })
    }
    case "bitmap": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const granularity = c.granularity !== undefined ? yield* sizeArg(c.granularity, "granularity") : 0
        const { runBitmap, bitmapActions } = yield* Effect.promise(() => import("../commands/bitmap.js"))
        // The flag table keeps no order across flags; qemu-img runs the actions in command-line order.
        const actions = bitmapActions(normalizeArgv(process.argv.slice(2)).slice(1))
        if (actions.length === 0) return yield* Effect.fail(fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"))
        if (granularity !== 0 && !c.add) return yield* Effect.fail(fail("granularity only supported with --add"))
        if (c.sourceFormat !== undefined && c.sourceFile === undefined) return yield* Effect.fail(fail("-F only supported with -b"))
        if (c.sourceFile !== undefined && c.merge.length === 0) return yield* Effect.fail(fail("Merge bitmap source file only supported with --merge"))
        if (c.file === undefined || c.bitmap === undefined) return yield* Effect.fail(fail("Expecting filename and bitmap name"))
        const format = yield* imageFormat(c.format)
        const sourceFormat = yield* imageFormat(c.sourceFormat)
        return yield* runBitmap({
          file: c.file,
          bitmap: c.bitmap,
          actions,
          format,
          granularity,
          sourceFile: c.sourceFile,
          sourceFormat,
          passphrase: secrets.passphrase
        })
      })
    }
    case "io": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const { runIo, ioCacheMode } = yield* Effect.promise(() => import("../commands/io.js"))
        const cache = yield* ioCacheMode(c.cache)
        return yield* runIo({ file: c.file, format, readOnly: c.readOnly, commands: c.cmd, passphrase: secrets.passphrase, writethrough: cache.writethrough })
      })
    }
  }
}
