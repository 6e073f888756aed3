/**
 * The effect/cli side of the command line: the commands of `spec.ts` as
 * effect/cli Commands. main.ts loads this only for command lines the fast
 * parser leaves alone (--help, --version, mistakes), so effect/cli prints
 * help and error messages, and a fine command line parses the same way.
 */
import { Cause, Effect, Option } from "effect"
import { Argument, CliConfig, CliOutput, Command, Flag, GlobalFlag } from "effect/cli"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { describeCause } from "../errors.js"
import { eprint, exitStatus, print } from "../output.js"
import { programName } from "../progname.js"
import { COMMANDS, ROOT_DESCRIPTION, VERSION, type ArgSpec, type CommandSpec, type FlagSpec, type Parsed } from "./spec.js"

type AnyParam = Flag.Flag<unknown> | Argument.Argument<unknown>

const lastGiven = <A>(given: ReadonlyArray<A>): A | undefined => given[given.length - 1]

const makeFlag = (f: FlagSpec): Flag.Flag<unknown> => {
  const named = <A>(flag: Flag.Flag<A>): Flag.Flag<A> => {
    let out = flag
    if (f.alias !== undefined) out = Flag.withAlias(out, f.alias)
    if (f.description !== undefined) out = Flag.withDescription(out, f.description)
    return out
  }
  // As qemu-img's getopt: an option given more than once is no error, the last one wins.
  switch (f.kind) {
    case "string":
      return named(Flag.String(f.name)).pipe(Flag.atLeast(0), Flag.map(lastGiven))
    case "stringDefault":
      return named(Flag.String(f.name)).pipe(
        Flag.atLeast(0),
        Flag.map((given) => lastGiven(given) ?? f.default)
      )
    case "boolean":
      return named(Flag.Boolean(f.name)).pipe(
        Flag.atLeast(0),
        Flag.map((given) => given.length > 0)
      )
    case "choice":
      return named(Flag.Literals(f.name, f.choices)).pipe(
        Flag.atLeast(0),
        Flag.map((given) => lastGiven(given) ?? f.default)
      )
    case "repeat":
      return named(Flag.String(f.name)).pipe(Flag.atLeast(0))
  }
}

const makeArgument = (a: ArgSpec): Argument.Argument<unknown> => {
  switch (a.kind) {
    case "one":
      return Argument.String(a.name)
    case "optional":
      return Argument.String(a.name).pipe(Argument.optional)
    case "sourcesAndTarget":
    case "many":
      return Argument.String(a.name).pipe(Argument.atLeast(0))
  }
}

/** effect/cli's parsed input in the shape the fast parser produces (Option → undefined). */
const valuesOf = (spec: CommandSpec, input: Record<string, unknown>): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const key of [...Object.keys(spec.flags), ...Object.keys(spec.args)]) {
    const v = input[key]
    out[key] = Option.isOption(v) ? Option.getOrUndefined(v) : v
  }
  return out
}

/**
 * The root command; `handle` receives each parsed command line. Exported
 * for the test that compares this parser with the fast one.
 */
export const rootCommand = <E, R>(handle: (parsed: Parsed) => Effect.Effect<void, E, R>) => {
  const subcommands = Object.values(COMMANDS).map((spec) => {
    const config: Record<string, AnyParam> = {}
    for (const [key, f] of Object.entries(spec.flags)) config[key] = makeFlag(f)
    for (const [key, a] of Object.entries(spec.args)) config[key] = makeArgument(a)
    return Command.make(spec.name, config, (input) => handle({ command: spec.name, values: valuesOf(spec, input as Record<string, unknown>) } as Parsed)).pipe(
      Command.withDescription(spec.description)
    )
  })
  return Command.make("qcow2").pipe(Command.withDescription(ROOT_DESCRIPTION), Command.withSubcommands(subcommands))
}

const formatter = CliOutput.defaultFormatter({ colors: false })

/** Runs effect/cli on `argv`; `run` executes a parsed command line. A bad command line sets the exit status to 1. */
export const runWithEffectCli = <R>(argv: ReadonlyArray<string>, run: (parsed: Parsed) => Effect.Effect<void, never, R>) => {
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
            eprint(
              `${programName}: ${first !== undefined ? first.message : "invalid arguments"}\nTry '${programName} ${[...event.commandPath.slice(1), "--help"].join(" ")}' for more information\n`
            )
            exitStatus.code = 1
            break
          }
        }
      })
  }
  return Command.runWith(rootCommand(run), { version: VERSION })(argv).pipe(
    Effect.provide(CliOutput.layerPresenter(presenter)),
    // `--help` is the only built-in flag: `-V`/`--version` come before the
    // subcommand (cli/root.ts), and --wizard, --completions and --log-level
    // are not options of this tool.
    Effect.provide(CliConfig.layer({ builtIns: [GlobalFlag.Help] })),
    Effect.provide(NodeServices.layer),
    Effect.catchCause((cause) =>
      Effect.sync(() => {
        const error = Cause.findErrorOption(cause)
        if (Option.isSome(error) && error.value._tag === "ShowHelp") {
          if (error.value.errors.length > 0) exitStatus.code = 1
          return
        }
        eprint(`${programName}: internal error: ${describeCause(cause)}\n`)
        exitStatus.code = 1
      })
    )
  )
}
