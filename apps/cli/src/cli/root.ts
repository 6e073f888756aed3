/**
 * The options that come before the subcommand, as qemu-img takes them
 * (qemu-img.c main: getopt "+:hVT:" until the first word that is not an
 * option): `-h`/`--help` prints the usage and exits 0, `-V`/`--version`
 * prints the version and exits 0, the first of them wins; any other
 * leading option is "unrecognized option" and no subcommand at all is
 * "Not enough arguments", an unknown subcommand "Command not found: X",
 * all exit 1 with "Try '… --help'". Only what
 * comes after the subcommand word goes to the subcommand parsers.
 *
 * The usage text is this tool's own: the subcommands of `spec.ts` with
 * their flags in qemu-img's "Command syntax" shape, not effect/cli's
 * built-in flags (`--wizard`, `--completions`, `--log-level`), which this
 * tool does not have.
 */
import { COMMANDS, VERSION, type CommandSpec, type FlagSpec } from "./spec.js"

/** What the words before the subcommand ask for. */
export type RootAction =
  /** A subcommand follows: parse the whole command line as usual. */
  | { readonly kind: "command" }
  | { readonly kind: "help" }
  | { readonly kind: "version" }
  /** A usage error, exit 1: `message` is qemu-img's wording. */
  | { readonly kind: "usage"; readonly message: string }

/** Decides what a normalised command line (see argv.ts) asks for before its subcommand. */
export const rootAction = (argv: ReadonlyArray<string>): RootAction => {
  for (const word of argv) {
    if (word === "--") break
    if (!word.startsWith("-") || word === "-") {
      return Object.hasOwn(COMMANDS, word) || word === "io" ? { kind: "command" } : { kind: "usage", message: `Command not found: ${word}` }
    }
    if (word === "-h" || word === "--help") return { kind: "help" }
    if (word === "-V" || word === "--version") return { kind: "version" }
    return { kind: "usage", message: `unrecognized option '${word}'` }
  }
  return { kind: "usage", message: "Not enough arguments" }
}

/** `qcow2 -V`: the first line of `qemu-img -V` with this tool's name and version. */
export const versionText = (program: string): string => `${program} version ${VERSION}\n`

const flagSyntax = (f: FlagSpec): string => {
  const value = f.kind === "boolean" ? "" : f.name.replaceAll("-", "_")
  if (f.alias !== undefined) return value === "" ? `[-${f.alias}]` : `[-${f.alias} ${value}]`
  return value === "" ? `[--${f.name}]` : `[--${f.name}=${value}]`
}

const argSyntax = (spec: CommandSpec): string =>
  Object.values(spec.args)
    .map((a) => (a.kind === "one" ? a.name : a.kind === "optional" ? `[${a.name}]` : a.kind === "sourcesAndTarget" ? `${a.name} [${a.name}2 [...]]` : `[${a.name} [...]]`))
    .join(" ")

/** `qcow2 --help`: qemu-img's usage text in shape, listing this tool's subcommands and flags. */
export const helpText = (program: string): string => {
  const commands = Object.values(COMMANDS as Readonly<Record<string, CommandSpec>>)
    .map((spec) => `  ${[spec.name, ...Object.values(spec.flags).map(flagSyntax), argSyntax(spec)].filter((w) => w !== "").join(" ")}`)
    .join("\n")
  const described = Object.values(COMMANDS as Readonly<Record<string, CommandSpec>>)
    .map((spec) => `  ${spec.name.padEnd(10)} ${spec.description}`)
    .join("\n")
  return `${versionText(program)}usage: ${program} [standard options] command [command options]
QCOW2 disk image tool: the subcommands of qemu-img, plus 'io' (qemu-io) and 'serve' (an NBD server like qemu-nbd)

    '-h', '--help'       display this help and exit
    '-V', '--version'    output version information and exit

Commands:
${described}
  io         qemu-io: run qemu-io commands on an image (see '${program} io --help')

Command syntax:
${commands}
  io [-f fmt] [-r] [-U] [-c command]... [--image-opts] [--object objectdef] filename

'${program} COMMAND --help' describes the options of one command.
Supported formats: qcow2 raw luks
`
}
