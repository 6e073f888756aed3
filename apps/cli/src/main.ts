/**
 * qcow2: a qemu-img / qemu-io style command-line tool over @qcow2/image.
 *
 * Parsing uses effect/cli; `argv.ts` first rewrites getopt habits it does
 * not know (glued option values such as "-fqcow2"). Every command returns
 * an exit code; failures print "qcow2: <message>" and never a stack trace.
 */
import { Cause, Effect, Option } from "effect"
import { CliOutput, Command, Flag, Argument } from "effect/cli"
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import type { ImageFormat } from "@qcow2/image"
import { normalizeArgv } from "./argv.js"
import { envLayer, imageOptions, type ImageEnv } from "./env.js"
import { CliFailure, fail, usage } from "./errors.js"
import { eprint, flushOutput, print } from "./output.js"
import { parseSecrets, type Secrets } from "./secrets.js"
import { runInfo } from "./commands/info.js"
import { runMap } from "./commands/map.js"
import { runCheck } from "./commands/check.js"
import { runCompare } from "./commands/compare.js"
import { runCreate } from "./commands/create.js"
import { runConvert } from "./commands/convert.js"
import { runIo } from "./commands/io.js"
import { parseSize } from "./text/strtosz.js"

const VERSION = "0.1.0"

let exitCode = 0

/** Runs a command body: sets the exit code, reports failures and defects briefly. */
const execute = (body: Effect.Effect<number, CliFailure, ImageEnv>): Effect.Effect<void> =>
  body.pipe(
    Effect.provide(envLayer),
    Effect.catchCause((cause) =>
      Effect.sync(() => {
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
      exitCode = code
    })
  )

const describeCause = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  if (error instanceof Error) return error.message
  if (typeof error === "object" && error !== null && "message" in error) return String((error as { message: unknown }).message)
  return String(error)
}

// ---- shared flags ---------------------------------------------------------

const formatFlag = Flag.String("format").pipe(Flag.withAlias("f"), Flag.withDescription("image format (qcow2 or raw); probed when omitted"), Flag.optional)
const outputFlag = Flag.Literals("output", ["human", "json"]).pipe(Flag.withDescription("output format"), Flag.withDefault("human" as const))
const objectFlag = Flag.String("object").pipe(
  Flag.withDescription("secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]: a passphrase for encrypt.key-secret"),
  Flag.atLeast(0)
)
const imageOptsFlag = Flag.Boolean("image-opts").pipe(
  Flag.withDescription("image names are option strings: driver=qcow2,file.filename=PATH,encrypt.key-secret=ID"),
  Flag.withDefault(false)
)
const forceShareFlag = Flag.Boolean("force-share").pipe(Flag.withAlias("U"), Flag.withDescription("accepted for compatibility (no locking here)"), Flag.withDefault(false))
const passphraseFileFlag = Flag.String("passphrase-file").pipe(Flag.withDescription("file holding the passphrase of an encrypted image"), Flag.optional)
const quietFlag = Flag.Boolean("quiet").pipe(Flag.withAlias("q"), Flag.withDescription("print nothing but errors"), Flag.withDefault(false))
const sourceCacheFlag = Flag.String("source-cache").pipe(Flag.withAlias("T"), Flag.withDescription("accepted for compatibility"), Flag.optional)

const common = {
  object: objectFlag,
  imageOpts: imageOptsFlag,
  forceShare: forceShareFlag,
  passphraseFile: passphraseFileFlag
}

const opt = <A>(o: Option.Option<A>): A | undefined => Option.getOrUndefined(o)

const imageFormat = (f: Option.Option<string>): Effect.Effect<ImageFormat | undefined, CliFailure> => {
  const v = opt(f)
  if (v === undefined || v === "qcow2" || v === "raw") return Effect.succeed(v)
  return Effect.fail(fail(`Unknown driver '${v}'`))
}

const secretsOf = (c: { readonly object: ReadonlyArray<string>; readonly imageOpts: boolean; readonly passphraseFile: Option.Option<string> }): Effect.Effect<Secrets, CliFailure> => {
  const r = parseSecrets(c.object, opt(c.passphraseFile))
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

// ---- subcommands ----------------------------------------------------------

const info = Command.make(
  "info",
  { format: formatFlag, output: outputFlag, backingChain: Flag.Boolean("backing-chain").pipe(Flag.withDefault(false)), ...common, file: Argument.String("filename") },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        return yield* runInfo({
          file: c.file,
          format: yield* imageFormat(c.format),
          output: c.output,
          backingChain: c.backingChain,
          passphrase: secrets.passphrase
        })
      })
    )
).pipe(Command.withDescription("show image information like qemu-img info"))

const map = Command.make(
  "map",
  {
    format: formatFlag,
    output: outputFlag,
    startOffset: Flag.String("start-offset").pipe(Flag.optional),
    maxLength: Flag.String("max-length").pipe(Flag.optional),
    ...common,
    file: Argument.String("filename")
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const start = opt(c.startOffset)
        const max = opt(c.maxLength)
        return yield* runMap({
          file: c.file,
          format: yield* imageFormat(c.format),
          output: c.output,
          ...(start !== undefined ? { startOffset: yield* sizeArg(start, "start offset") } : {}),
          ...(max !== undefined ? { maxLength: yield* sizeArg(max, "max length") } : {}),
          passphrase: secrets.passphrase
        })
      })
    )
).pipe(Command.withDescription("show the guest-to-host mapping like qemu-img map"))

const check = Command.make(
  "check",
  {
    format: formatFlag,
    output: outputFlag,
    repair: Flag.String("repair").pipe(Flag.withAlias("r"), Flag.withDescription("leaks or all"), Flag.optional),
    quiet: quietFlag,
    sourceCache: sourceCacheFlag,
    ...common,
    file: Argument.String("filename")
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const repair = opt(c.repair)
        if (repair !== undefined && repair !== "leaks" && repair !== "all") {
          return yield* Effect.fail(usage(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`))
        }
        return yield* runCheck({
          file: c.file,
          format: yield* imageFormat(c.format),
          output: c.output,
          quiet: c.quiet,
          ...(repair !== undefined ? { repair } : {}),
          passphrase: secrets.passphrase
        })
      })
    )
).pipe(Command.withDescription("check (and repair) an image like qemu-img check"))

const compare = Command.make(
  "compare",
  {
    format: formatFlag,
    format2: Flag.String("format2").pipe(Flag.withAlias("F"), Flag.withDescription("format of the second image"), Flag.optional),
    strict: Flag.Boolean("strict").pipe(Flag.withAlias("s"), Flag.withDefault(false)),
    progress: Flag.Boolean("progress").pipe(Flag.withAlias("p"), Flag.withDefault(false)),
    quiet: quietFlag,
    sourceCache: sourceCacheFlag,
    ...common,
    file1: Argument.String("filename1"),
    file2: Argument.String("filename2")
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        return yield* runCompare({
          file1: c.file1,
          file2: c.file2,
          format1: yield* imageFormat(c.format),
          format2: yield* imageFormat(c.format2),
          strict: c.strict,
          progress: c.progress,
          quiet: c.quiet,
          passphrase: secrets.passphrase
        }).pipe(Effect.mapError((e) => (e.exitCode === 1 && e.message.startsWith("Could not open") ? new CliFailure({ ...e, exitCode: 2 }) : e)))
      })
    )
).pipe(Command.withDescription("compare the contents of two images like qemu-img compare"))

const create = Command.make(
  "create",
  {
    format: Flag.String("format").pipe(Flag.withAlias("f"), Flag.withDescription("qcow2 (default) or raw"), Flag.withDefault("qcow2")),
    options: Flag.String("options").pipe(Flag.withAlias("o"), Flag.withDescription("name=value,… creation options"), Flag.atLeast(0)),
    backing: Flag.String("backing").pipe(Flag.withAlias("b"), Flag.withDescription("backing file"), Flag.optional),
    backingFormat: Flag.String("backing-format").pipe(Flag.withAlias("F"), Flag.withDescription("backing file format"), Flag.optional),
    unsafe: Flag.Boolean("unsafe").pipe(Flag.withAlias("u"), Flag.withDescription("do not open the backing file"), Flag.withDefault(false)),
    quiet: quietFlag,
    object: objectFlag,
    passphraseFile: passphraseFileFlag,
    file: Argument.String("filename"),
    size: Argument.String("size").pipe(Argument.optional)
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf({ ...c, imageOpts: false })
        const size = opt(c.size)
        const backing = opt(c.backing)
        const backingFormat = opt(c.backingFormat)
        return yield* runCreate({
          file: c.file,
          format: c.format,
          options: c.options,
          unsafe: c.unsafe,
          quiet: c.quiet,
          secrets,
          ...(size !== undefined ? { size } : {}),
          ...(backing !== undefined ? { backingFile: backing } : {}),
          ...(backingFormat !== undefined ? { backingFormat } : {})
        })
      })
    )
).pipe(Command.withDescription("create an image like qemu-img create"))

const convert = Command.make(
  "convert",
  {
    format: formatFlag,
    targetFormat: Flag.String("target-format").pipe(Flag.withAlias("O"), Flag.withDescription("raw (default) or qcow2"), Flag.withDefault("raw")),
    options: Flag.String("options").pipe(Flag.withAlias("o"), Flag.withDescription("name=value,… target creation options"), Flag.atLeast(0)),
    compress: Flag.Boolean("compress").pipe(Flag.withAlias("c"), Flag.withDescription("compress the qcow2 target"), Flag.withDefault(false)),
    sparseSize: Flag.String("sparse-size").pipe(Flag.withAlias("S"), Flag.withDescription("zero runs at least this long stay holes (default 4k; 0 = write all)"), Flag.optional),
    progress: Flag.Boolean("progress").pipe(Flag.withAlias("p"), Flag.withDefault(false)),
    quiet: quietFlag,
    noCreate: Flag.Boolean("no-create").pipe(Flag.withAlias("n"), Flag.withDescription("the target exists; do not create it"), Flag.withDefault(false)),
    parallel: Flag.String("parallel").pipe(Flag.withAlias("m"), Flag.withDescription("requests in flight (default 8)"), Flag.optional),
    outOfOrder: Flag.Boolean("out-of-order").pipe(Flag.withAlias("W"), Flag.withDescription("accepted; writes are always unordered"), Flag.withDefault(false)),
    backing: Flag.String("backing").pipe(Flag.withAlias("B"), Flag.withDescription("backing file of the target"), Flag.optional),
    backingFormat: Flag.String("backing-format").pipe(Flag.withAlias("F"), Flag.optional),
    cache: Flag.String("cache").pipe(Flag.withAlias("t"), Flag.withDescription("target cache mode; 'unsafe' (the default, as in qemu-img convert) skips flushes"), Flag.optional),
    sourceCache: sourceCacheFlag,
    targetIsZero: Flag.Boolean("target-is-zero").pipe(Flag.withDefault(false)),
    ...common,
    files: Argument.String("filename").pipe(Argument.atLeast(2))
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        const target = c.targetFormat
        if (target !== "raw" && target !== "qcow2") return yield* Effect.fail(fail(`Unknown file format '${target}'`))
        if (c.targetIsZero && !c.noCreate) return yield* Effect.fail(fail("--target-is-zero requires use of -n flag"))
        let sparseSize = 4096
        const s = opt(c.sparseSize)
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
        const m = opt(c.parallel)
        if (m !== undefined) {
          parallel = Number(m)
          if (!Number.isInteger(parallel) || parallel < 1 || parallel > 16) {
            return yield* Effect.fail(fail("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"))
          }
        }
        const backing = opt(c.backing)
        const backingFormat = opt(c.backingFormat)
        return yield* runConvert({
          sources: c.files.slice(0, -1),
          target: c.files[c.files.length - 1]!,
          format: yield* imageFormat(c.format),
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
          cache: opt(c.cache) ?? "unsafe",
          ...(backing !== undefined ? { backingFile: backing } : {}),
          ...(backingFormat !== undefined ? { backingFormat } : {})
        })
      })
    )
).pipe(Command.withDescription("convert images like qemu-img convert (raw or qcow2 target)"))

const io = Command.make(
  "io",
  {
    format: formatFlag,
    readOnly: Flag.Boolean("read-only").pipe(Flag.withAlias("r"), Flag.withDefault(false)),
    cmd: Flag.String("cmd").pipe(Flag.withAlias("c"), Flag.withDescription("qemu-io command (repeatable): read, write, discard, flush, truncate, map, alloc, info, length"), Flag.atLeast(0)),
    ...common,
    file: Argument.String("filename")
  },
  (c) =>
    execute(
      Effect.gen(function* () {
        const secrets = yield* secretsOf(c)
        return yield* runIo({
          file: c.file,
          format: yield* imageFormat(c.format),
          readOnly: c.readOnly,
          commands: c.cmd,
          passphrase: secrets.passphrase
        })
      })
    )
).pipe(Command.withDescription("run qemu-io commands on an image"))

const root = Command.make("qcow2").pipe(
  Command.withDescription("QCOW2 disk image tool (qemu-img / qemu-io compatible subset)"),
  Command.withSubcommands([info, map, check, compare, create, convert, io])
)

// ---- output of effect/cli itself ----------------------------------------

const formatter = CliOutput.defaultFormatter({ colors: false })

const presenter: CliOutput.Presenter = {
  present: (event) =>
    Effect.sync(() => {
      switch (event._tag) {
        case "Help":
          print(formatter.formatHelpDoc(event.helpDoc) + "\n")
          break
        case "Version":
          print(`qcow2 version ${event.version}\n`)
          break
        case "InvalidInvocation": {
          const first = event.errors[0]
          eprint(`qcow2: ${first !== undefined ? first.message : "invalid arguments"}\nTry 'qcow2 ${[...event.commandPath.slice(1), "--help"].join(" ")}' for more information\n`)
          exitCode = 1
          break
        }
      }
    })
}

const program = Command.runWith(root, { version: VERSION })(normalizeArgv(process.argv.slice(2))).pipe(
  Effect.provide(CliOutput.layerPresenter(presenter)),
  Effect.provide(NodeServices.layer),
  Effect.catchCause((cause) =>
    Effect.sync(() => {
      const error = Cause.findErrorOption(cause)
      if (Option.isSome(error) && (error.value as { _tag?: string })._tag === "ShowHelp") {
        const errors = (error.value as { errors?: ReadonlyArray<unknown> }).errors ?? []
        if (errors.length > 0) exitCode = 1
        return
      }
      eprint(`qcow2: internal error: ${describeCause(cause)}\n`)
      exitCode = 1
    })
  )
)

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  teardown: (_exit, onExit) => {
    flushOutput()
    process.exitCode = exitCode
    onExit(0)
  }
})
