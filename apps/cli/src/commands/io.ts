/**
 * qemu-io (`qcow2 io ARGS`, or ARGS when run as `qemu-io`), as qemu-io.c's
 * main does it: its own getopt_long command line (parsed here, not by
 * effect/cli), the image named by the operand opened, then the -c commands
 * in order, or with none, commands read from standard input as they come
 * (after a "qemu-io> " prompt, which writes out what the commands before
 * printed, as qemu-io's fflush does; otherwise stdout is buffered as C
 * stdio buffers it, see output.ts). Exit status 1 if any command failed.
 */
import { Effect } from "effect"
import type { ImageEnv } from "../env.js"
import { CliFailure } from "../errors.js"
import { print } from "../output.js"
import { errorReport, programName } from "../progname.js"
import { parseOptionString, type BlockOptions } from "../qemu-filename.js"
import { parseSecrets } from "../secrets.js"
import { VERSION } from "../cli/spec.js"
import { parseProgramArgs } from "../io/program-args.js"
import { runIoCommand } from "../io/registry.js"
import { IoSession, isDiscardMode, parseAioMode, parseCacheMode, type AioMode, type CacheMode, type OpenRequest } from "../io/session.js"
import { readCommandLines } from "../io/stdin.js"

/** qemu-io's --help text, with the name it was run by. */
const usageText = (name: string): string => `Usage: ${name} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '${name} -c help' for information on available commands.
`

/** The name usage and version lines show: qemu-io's own, or `qcow2 io`. */
const shownName = (): string => (programName === "qemu-io" ? "qemu-io" : `${programName} io`)

/** A parsed qemu-io command line, or the exit status it ends with at once. */
type Plan =
  | { readonly run: true; readonly commands: ReadonlyArray<string>; readonly open: OpenRequest | undefined; readonly objects: ReadonlyArray<string>; readonly imageOpts: boolean }
  | { readonly run: false; readonly exitCode: number }

const stop = (exitCode: number, message?: string): Plan => {
  if (message !== undefined) errorReport(message)
  return { run: false, exitCode }
}

/**
 * -T [enable=]PATTERN[,events=FILE][,file=FILE]: this tool has no trace
 * events, so a named event is one that does not exist (QEMU's warning); a
 * pattern with wildcards matches nothing, silently.
 */
const warnUnknownTraceEvent = (spec: string): void => {
  const fields = spec.split(",")
  const first = fields[0] ?? ""
  const pattern = first.startsWith("enable=") ? first.slice("enable=".length) : first.includes("=") ? "" : first
  if (pattern !== "" && !/[*?]/.test(pattern)) errorReport(`warning: trace event '${pattern}' does not exist`)
}

/** Acts on qemu-io's options in order, as its getopt loop does. */
const plan = (args: ReadonlyArray<string>): Plan => {
  const parsed = parseProgramArgs(args)
  const commands: string[] = []
  const objects: string[] = []
  let format: string | undefined
  let readOnly = false
  let snapshot = false
  let copyOnRead = false
  let forceShare = false
  let imageOpts = false
  let cache: CacheMode = "writethrough"
  let aio: AioMode = "threads"
  for (const { key, value } of parsed.options) {
    switch (key) {
      case "h":
        print(usageText(shownName()))
        return stop(0)
      case "V":
        print(`${shownName()} version ${VERSION}\n`)
        return stop(0)
      case "c":
        commands.push(value!)
        break
      case "f":
        format = value
        break
      case "r":
        readOnly = true
        break
      case "s":
        snapshot = true
        break
      case "n":
        cache = "none"
        break
      case "C":
        copyOnRead = true
        break
      case "U":
        forceShare = true
        break
      case "k":
        aio = "native"
        break
      case "i": {
        const mode = parseAioMode(value!)
        if (mode === undefined) return stop(1, `Invalid aio option: ${value}`)
        aio = mode
        break
      }
      case "t": {
        const mode = parseCacheMode(value!)
        if (mode === undefined) return stop(1, `Invalid cache option: ${value}`)
        cache = mode
        break
      }
      case "d":
        if (!isDiscardMode(value!)) return stop(1, `Invalid discard option: ${value}`)
        break
      case "object":
        objects.push(value!)
        break
      case "image-opts":
        imageOpts = true
        break
      case "T":
        warnUnknownTraceEvent(value!)
        break
      // -m (misalign buffers), -U (force share): nothing to change here.
    }
  }
  if (parsed.error !== undefined) {
    errorReport(parsed.error)
    print(usageText(shownName()))
    return stop(1)
  }
  if (parsed.operands.length > 1) {
    print(usageText(shownName()))
    return stop(1)
  }
  if (format !== undefined && imageOpts) return stop(1, "--image-opts and -f are mutually exclusive")
  const operand = parsed.operands[0]
  let open: OpenRequest | undefined
  if (operand !== undefined) {
    const options: BlockOptions = imageOpts ? parseOptionString(operand) : new Map()
    open = { name: imageOpts ? undefined : operand, options, format, readOnly, snapshot, copyOnRead, forceShare, cache, aio }
  }
  return { run: true, commands, open, objects, imageOpts }
}

/** The qemu-io program over `args` (everything after the program name or `io`): its exit status. */
export const runQemuIo = (args: ReadonlyArray<string>): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.suspend(() => {
    const p = plan(args)
    if (!p.run) return Effect.succeed(p.exitCode)
    const secrets = parseSecrets(p.objects, undefined)
    if (!secrets.ok) return Effect.fail(new CliFailure({ message: secrets.message, exitCode: 1 }))
    const session = new IoSession(secrets.secrets, p.imageOpts)
    return Effect.gen(function* () {
      if (p.open !== undefined && !(yield* session.open(p.open))) return 1
      let failed = false
      const run = (line: string) =>
        runIoCommand(session, line).pipe(
          Effect.map((ok) => {
            if (!ok) failed = true
          })
        )
      if (p.commands.length > 0) {
        for (const line of p.commands) {
          if (session.quitRequested) break
          yield* run(line)
        }
      } else {
        yield* readCommandLines(run, () => session.quitRequested)
      }
      const closed = yield* session.close()
      return failed || !closed ? 1 : 0
    }).pipe(Effect.ensuring(session.close()))
  })

/** Whether the command line carries secrets (--object), so the cipher kernels must be loaded. */
export const qemuIoHasSecrets = (args: ReadonlyArray<string>): boolean => parseProgramArgs(args).options.some((o) => o.key === "object")
