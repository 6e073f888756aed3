/**
 * What each subcommand does with its parsed values: validation in
 * qemu-img's words, then the command module, loaded on demand so that a
 * command does not pay for the code of the others.
 */
import { Cause, Effect, Layer, Option } from "effect"
import { cipherLayer, envLayer, imageOptions, type CliFormat, type ImageEnv } from "../env.js"
import { CliFailure, describeCause, fail, usage } from "../errors.js"
import { normalizeArgv } from "../argv.js"
import { convertOptionCheck } from "../optionhelp.js"
import { eprint, exitStatus, print } from "../output.js"
import { programName } from "../progname.js"
import { reportLine } from "../report.js"
import { parseSecrets, type Secrets } from "../secrets.js"
import { parseSize, parseSizeBig } from "../text/strtosz.js"
import type { SnapshotSelector } from "../commands/snapshot.js"
import { splitOptionList } from "../createopts.js"
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
          eprint(`${programName}: ${f.message}\n${f.usage === true ? `Try '${programName} --help' for more information\n` : ""}`)
          return f.exitCode
        }
        eprint(`${programName}: internal error: ${describeCause(cause)}\n`)
        return 1
      })
    ),
    Effect.map((code) => {
      exitStatus.code = code
    })
  )

const imageFormat = (v: string | undefined): Effect.Effect<CliFormat | undefined, CliFailure> => {
  if (v === undefined || v === "qcow2" || v === "raw" || v === "luks" || v === "null-co") return Effect.succeed(v)
  return Effect.fail(fail(`Unknown driver '${v}'`))
}

/** `-l snapshot.id=…|snapshot.name=…|NAME` of convert and measure (the snapshot module is loaded only when given). */
const snapshotSelector = (param: string | undefined): Effect.Effect<SnapshotSelector | undefined, CliFailure> =>
  param === undefined
    ? Effect.succeed(undefined)
    : Effect.flatMap(
        Effect.promise(() => import("../commands/snapshot.js")),
        ({ parseSnapshotParam }) => {
          const parsed = parseSnapshotParam(param)
          return parsed instanceof CliFailure ? Effect.fail(parsed) : Effect.succeed(parsed)
        }
      )

/**
 * The --object secrets, and --image-opts turned on for the command's
 * names; -f with --image-opts is refused as qemu-img's img_open refuses it
 * (the format belongs in the option string).
 */
const secretsOf = (c: {
  readonly object: ReadonlyArray<string>
  readonly imageOpts: boolean
  readonly passphraseFile: string | undefined
  readonly format?: string | undefined
}, exitCode = 1): Effect.Effect<Secrets, CliFailure> => {
  if (c.imageOpts && c.format !== undefined) return Effect.fail(fail("--image-opts and --format are mutually exclusive", exitCode))
  const r = parseSecrets(c.object, c.passphraseFile)
  if (!r.ok) return Effect.fail(fail(r.message))
  imageOptions.secrets = r.secrets.byId
  if (c.imageOpts) imageOptions.enabled = true
  return Effect.succeed(r.secrets)
}

const sizeArg = (text: string, what: string): Effect.Effect<number, CliFailure> => {
  const r = parseSize(text)
  if (r.ok) return Effect.succeed(r.value)
  return Effect.fail(
    fail(
      r.reason === "range"
        ? `Invalid ${what} specified. Must be between 0 and 9223372036854775807.`
        : // Two error_report lines in qemu-img, each with the program name.
          `Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for\n${programName}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`
    )
  )
}

/**
 * Whether a `-o` list is one qemu-img accepts (is_valid_option_list): not
 * empty, not starting with a comma, and not ending in an unescaped one.
 */
const isValidOptionList = (list: string): boolean => {
  if (list === "" || list.startsWith(",")) return false
  const trailing = list.length - list.replace(/,+$/, "").length
  return trailing % 2 === 0
}

/** Cache modes qemu-img accepts for -t/-T (bdrv_parse_cache_mode). */
const CACHE_MODES: ReadonlySet<string> = new Set(["none", "off", "writeback", "writethrough", "directsync", "unsafe"])

/** The command line carries secrets (--object, --passphrase-file; bench takes neither, as in qemu-img 7.2). */
export const hasSecrets = (p: Parsed): boolean =>
  p.command !== "bench" && (p.values.object.length > 0 || p.values.passphraseFile !== undefined)

/** The body of a parsed command line. */
export const commandBody = (p: Parsed): Effect.Effect<number, CliFailure, ImageEnv> => {
  switch (p.command) {
    case "info": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const { runInfo } = yield* Effect.promise(() => import("../commands/info.js"))
        return yield* runInfo({ file: c.file, format, output: c.output as "human" | "json", backingChain: c.backingChain, passphrase: secrets.passphrase, forceShare: c.forceShare })
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
          passphrase: secrets.passphrase,
          forceShare: c.forceShare
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
          passphrase: secrets.passphrase,
          forceShare: c.forceShare
        })
      })
    }
    case "compare": {
      const c = p.values
      return Effect.gen(function* () {
        // compare fails with 2 once it comes to open an image (qemu-img's img_compare).
        const secrets = yield* secretsOf({ ...c, format: c.format ?? c.format2 }, 2)
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
          passphrase: secrets.passphrase,
          forceShare: c.forceShare
        }).pipe(Effect.mapError((e) => (e.exitCode === 1 && e.message.startsWith("Could not open") ? new CliFailure({ ...e, exitCode: 2 }) : e)))
      })
    }
    case "create": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf({ ...c, imageOpts: false })
        const { runCreate } = yield* Effect.promise(() => import("../commands/create.js"))
        return yield* runCreate({
          file: c.file ?? "",
          options: c.options,
          unsafe: c.unsafe,
          quiet: c.quiet,
          secrets,
          ...(c.format !== undefined ? { format: c.format } : {}),
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
        if (c.compress && c.copyRange) return yield* Effect.fail(fail("Cannot enable copy offloading when -c is used"))
        if (c.sparseSize !== undefined && c.copyRange) return yield* Effect.fail(fail("Cannot enable copy offloading when -S is used"))
        if (c.copyRange && c.salvage) return yield* Effect.fail(fail("Cannot use copy offloading in salvaging mode"))
        // `-o backing_file=X` is -B X (qemu-img.c takes the option as out_baseimg); the last one given wins.
        const backingOption = c.options.flatMap((list) => splitOptionList(list)).filter(([name]) => name === "backing_file").pop()
        const backing = c.backing ?? backingOption?.[1]
        if (c.skipBrokenBitmaps && !c.bitmaps) return yield* Effect.fail(fail("Use of --skip-broken-bitmaps requires --bitmaps"))
        if (c.targetIsZero && !c.noCreate) return yield* Effect.fail(fail("--target-is-zero requires use of -n flag"))
        const checked = convertOptionCheck(c.options, c.targetFormat, c.files.length, c.noCreate)
        if (checked.kind !== "go") return checked.kind === "help" ? (print(checked.text), 0) : yield* Effect.fail(fail(checked.message))
        const target = checked.target
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
        const snapshot = yield* snapshotSelector(c.snapshot)
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
          outOfOrder: c.outOfOrder,
          secrets,
          cache: c.cache ?? "unsafe",
          ...(snapshot !== undefined ? { snapshot } : {}),
          salvage: c.salvage,
          copyRange: c.copyRange,
          forceShare: c.forceShare,
          bitmaps: c.bitmaps,
          skipBrokenBitmaps: c.skipBrokenBitmaps,
          ...(backing !== undefined ? { backingFile: backing } : {}),
          ...(c.backingFormat !== undefined ? { backingFormat: c.backingFormat } : {})
        })
      })
    }
    case "bitmap": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        // -g, -b and -F may repeat: the last one counts, as in qemu-img.
        const lastGranularity = c.granularity.at(-1)
        const sourceFile = c.sourceFile.at(-1)
        const sourceFormatName = c.sourceFormat.at(-1)
        const granularity = lastGranularity !== undefined ? yield* sizeArg(lastGranularity, "granularity") : 0
        const { runBitmap, bitmapActions } = yield* Effect.promise(() => import("../commands/bitmap.js"))
        // The flag table keeps no order across flags; qemu-img runs the actions in command-line order.
        const actions = bitmapActions(normalizeArgv(process.argv.slice(2)).slice(1))
        if (actions.length === 0) return yield* Effect.fail(fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"))
        if (granularity !== 0 && !c.add) return yield* Effect.fail(fail("granularity only supported with --add"))
        if (sourceFormatName !== undefined && sourceFile === undefined) return yield* Effect.fail(fail("-F only supported with -b"))
        if (sourceFile !== undefined && c.merge.length === 0) return yield* Effect.fail(fail("Merge bitmap source file only supported with --merge"))
        if (c.file === undefined || c.bitmap === undefined) return yield* Effect.fail(fail("Expecting filename and bitmap name"))
        const format = yield* imageFormat(c.format)
        const sourceFormat = yield* imageFormat(sourceFormatName)
        // A merge source is opened as an image file (no null-co device there).
        if (sourceFormat === "null-co") return yield* Effect.fail(fail("Unknown driver 'null-co'"))
        return yield* runBitmap({
          file: c.file,
          bitmap: c.bitmap,
          actions,
          format,
          granularity,
          sourceFile,
          sourceFormat,
          passphrase: secrets.passphrase
        })
      })
    }
    case "resize": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const { runResize } = yield* Effect.promise(() => import("../commands/resize.js"))
        return yield* runResize({
          file: c.file,
          size: c.size,
          format,
          shrink: c.shrink,
          quiet: c.quiet,
          ...(c.preallocation !== undefined ? { preallocation: c.preallocation } : {}),
          passphrase: secrets.passphrase
        })
      })
    }
    case "amend": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const { runAmend } = yield* Effect.promise(() => import("../commands/amend.js"))
        return yield* runAmend({ file: c.file ?? "", format: c.format, options: c.options, force: c.force, quiet: c.quiet, progress: c.progress, secrets })
      })
    }
    case "bench": {
      const c = p.values
      return Effect.gen(function* () {
        const { benchOptions, runBench } = yield* Effect.promise(() => import("../commands/bench.js"))
        return yield* runBench(yield* benchOptions(c))
      })
    }
    case "commit": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        if (c.cache !== undefined && !CACHE_MODES.has(c.cache)) return yield* Effect.fail(fail(`Invalid cache option: ${c.cache}`))
        if (c.rateLimit !== undefined) yield* sizeArg(c.rateLimit, "rate limit")
        const { runCommit } = yield* Effect.promise(() => import("../commands/commit.js"))
        return yield* runCommit({
          file: c.file,
          format,
          drop: c.drop,
          progress: c.progress,
          quiet: c.quiet,
          passphrase: secrets.passphrase,
          ...(c.base !== undefined ? { base: c.base } : {})
        })
      })
    }
    case "rebase": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        if (!c.unsafe && c.backing === undefined) return yield* Effect.fail(usage("Must specify backing file (-b) or use unsafe mode (-u)"))
        const format = yield* imageFormat(c.format)
        if (c.cache !== undefined && !CACHE_MODES.has(c.cache)) return yield* Effect.fail(fail(`Invalid cache option: ${c.cache}`))
        if (c.sourceCache !== undefined && !CACHE_MODES.has(c.sourceCache)) return yield* Effect.fail(fail(`Invalid source cache option: ${c.sourceCache}`))
        const { runRebase } = yield* Effect.promise(() => import("../commands/rebase.js"))
        return yield* runRebase({
          file: c.file,
          format,
          backing: c.backing,
          unsafe: c.unsafe,
          progress: c.progress,
          quiet: c.quiet,
          passphrase: secrets.passphrase,
          ...(c.backingFormat !== undefined ? { backingFormat: c.backingFormat } : {})
        })
      })
    }
    case "measure": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const bad = c.options.find((list) => !isValidOptionList(list))
        if (bad !== undefined) return yield* Effect.fail(fail(`Invalid option list: ${bad}`))
        if (c.snapshot !== undefined && c.snapshot.startsWith("snapshot.")) {
          const unknown = c.snapshot.split(",").map((field) => field.split("=")[0]!).find((name) => name !== "snapshot.id" && name !== "snapshot.name")
          if (unknown !== undefined) {
            reportLine(`Invalid parameter '${unknown}'`)
            return yield* Effect.fail(fail(`Failed in parsing snapshot param '${c.snapshot}'`))
          }
        }
        if (c.output !== undefined && c.output !== "human" && c.output !== "json") {
          return yield* Effect.fail(fail("--output must be used with human or json as argument."))
        }
        let size: number | undefined
        if (c.size !== undefined) {
          const r = parseSizeBig(c.size)
          // measure's --size is an int64 (cvtnum_full up to INT64_MAX).
          if ((!r.ok && r.reason === "range") || (r.ok && r.value > (1n << 63n) - 1n)) return yield* sizeArg(c.size, "image size")
          if (!r.ok) {
            reportLine("Invalid image size specified. You may use k, M, G, T, P or E suffixes for")
            return yield* Effect.fail(fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."))
          }
          size = Number(r.value)
        }
        if (c.files.length > 1) return yield* Effect.fail(fail("At most one filename argument is allowed."))
        const file = c.files[0]
        if (file === undefined && (c.imageOpts || c.format !== undefined || c.snapshot !== undefined)) {
          return yield* Effect.fail(fail("--image-opts, -f, and -l require a filename argument."))
        }
        if (file !== undefined && size !== undefined) return yield* Effect.fail(fail("--size N cannot be used together with a filename."))
        if (file === undefined && size === undefined) return yield* Effect.fail(fail("Either --size N or one filename must be specified."))
        const format = yield* imageFormat(c.format)
        const snapshot = yield* snapshotSelector(c.snapshot)
        const { runMeasure } = yield* Effect.promise(() => import("../commands/measure.js"))
        return yield* runMeasure({
          format,
          outFormat: c.targetFormat,
          options: c.options,
          output: c.output === "json" ? "json" : "human",
          passphrase: secrets.passphrase,
          ...(file !== undefined ? { file } : {}),
          ...(size !== undefined ? { size } : {}),
          ...(snapshot !== undefined ? { snapshot } : {})
        })
      })
    }
    case "dd": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const format = yield* imageFormat(c.format)
        const { runDd } = yield* Effect.promise(() => import("../commands/dd.js"))
        return yield* runDd({ operands: c.operands, format, outFormat: c.targetFormat, passphrase: secrets.passphrase })
      })
    }
    case "snapshot": {
      const c = p.values
      return Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const chosen = [c.list ? { kind: "list" as const } : undefined, ...(["create", "apply", "delete"] as const).map((kind) => {
          const name = c[kind]
          return name !== undefined ? { kind, name } : undefined
        })].filter((a) => a !== undefined)
        if (chosen.length > 1) return yield* Effect.fail(usage("Cannot mix '-l', '-a', '-c', '-d'"))
        const { runSnapshot } = yield* Effect.promise(() => import("../commands/snapshot.js"))
        return yield* runSnapshot({ file: c.file, action: chosen[0] ?? { kind: "none" }, passphrase: secrets.passphrase })
      })
    }
    case "serve": {
      const c = p.values
      return Effect.gen(function* () {
        const { serveOptions } = yield* Effect.promise(() => import("../commands/serve-options.js"))
        const options = yield* serveOptions(c, yield* secretsOf(c))
        const { runServe } = yield* Effect.promise(() => import("../commands/serve.js"))
        return yield* runServe(options)
      })
    }
  }
}
