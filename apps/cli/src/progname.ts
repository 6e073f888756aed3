/**
 * The name the tool was invoked by. QEMU's error_report prefixes messages
 * with the program name, so run as `qemu-img` or `qemu-io` (a symlink or a
 * bin script of that name, or `exec -a NAME`, which sets argv[0]) this CLI
 * says `qemu-img: …` / `qemu-io: …`; otherwise `qcow2: …`. Run as
 * `qemu-io`, the command line is qemu-io's own (no subcommand word).
 */
import * as path from "node:path"
import { eprint } from "./output.js"

export type ProgramName = "qcow2" | "qemu-img" | "qemu-io"

const asProgram = (word: string | undefined): ProgramName | undefined => {
  if (word === undefined) return undefined
  const base = path.basename(word).replace(/\.(?:mjs|cjs|js)$/, "")
  return base === "qemu-img" || base === "qemu-io" ? base : undefined
}

/** How this process was invoked: the script's own name (symlink or bin file), then argv[0]. */
const invocation = (): { readonly name: ProgramName; readonly byArgv0: boolean } => {
  const script = asProgram(process.argv[1])
  if (script !== undefined) return { name: script, byArgv0: false }
  const argv0 = asProgram(process.argv0)
  return argv0 !== undefined ? { name: argv0, byArgv0: true } : { name: "qcow2", byArgv0: false }
}

const invoked = invocation()

/** The program name messages are prefixed with. */
export const programName: ProgramName = invoked.name

/**
 * The qemu-io command line when this process runs qemu-io: `qcow2 io ARGS`,
 * or ARGS when invoked as `qemu-io`. `exec -a qemu-io qcow2.mjs io ARGS`
 * (a wrapper that names the subcommand too) is qemu-io with ARGS.
 * Undefined for every other command line.
 */
export const qemuIoArguments = (args: ReadonlyArray<string>): ReadonlyArray<string> | undefined => {
  if (invoked.name === "qemu-io" && !(invoked.byArgv0 && args[0] === "io")) return args
  return args[0] === "io" ? args.slice(1) : undefined
}

/** QEMU's error_report: "<program>: <message>" on stderr. */
export const errorReport = (message: string): void => eprint(`${programName}: ${message}\n`)
