/**
 * qemu-io's commands (qemu-io-cmds.c) by name, and the runner of one
 * command line (qemu-io's command()): split it, find the command, check
 * that an image is open, the argument count and write permission, parse
 * its options, run it. Each command lives in commands/.
 */
import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import type { ImageEnv } from "../env.js"
import { eprint, print } from "../output.js"
import { errorReport } from "../progname.js"
import { printUsage, synopsis, type IoCommand } from "./command.js"
import { aioFlushCommand, aioReadCommand, aioWriteCommand } from "./commands/aio.js"
import { allocCommand } from "./commands/alloc.js"
import { breakCommand, removeBreakCommand, resumeCommand, waitBreakCommand } from "./commands/breakpoints.js"
import { discardCommand } from "./commands/discard.js"
import { flushCommand } from "./commands/flush.js"
import { infoCommand } from "./commands/info.js"
import { lengthCommand } from "./commands/length.js"
import { mapCommand } from "./commands/map.js"
import { closeCommand, openCommand, reopenCommand } from "./commands/open.js"
import { abortCommand, quitCommand, sigraiseCommand, sleepCommand } from "./commands/process.js"
import { readCommand } from "./commands/read.js"
import { readvCommand } from "./commands/readv.js"
import { truncateCommand } from "./commands/truncate.js"
import { writeCommand } from "./commands/write.js"
import { writevCommand } from "./commands/writev.js"
import { breakline, getopt, type GetoptResult } from "./getopt.js"
import type { IoSession } from "./session.js"

/** `help [command]`: every command's synopsis, or one command's with its extended help. */
const helpCommand: IoCommand = {
  name: "help",
  needsFile: false,
  alias: "?",
  argmin: 0,
  argmax: 1,
  args: "[command]",
  oneline: "help for one or all commands",
  run: (_session, p) =>
    Effect.sync(() => {
      const name = p.operands[0]
      if (name === undefined) {
        const lines = [...IO_COMMANDS].sort((a, b) => (a.name < b.name ? -1 : 1)).map((c) => `${synopsis(c)}\n`)
        print(`${lines.join("")}\nUse 'help commandname' for extended help.\n`)
        return true
      }
      const command = findCommand(name)
      if (command === undefined) {
        print(`command ${name} not found\n`)
        return false
      }
      print(`${synopsis(command)}\n${command.help ?? ""}`)
      return true
    })
}

const IO_COMMANDS: ReadonlyArray<IoCommand> = [
  abortCommand,
  aioFlushCommand,
  aioReadCommand,
  aioWriteCommand,
  allocCommand,
  breakCommand,
  closeCommand,
  discardCommand,
  flushCommand,
  helpCommand,
  infoCommand,
  lengthCommand,
  mapCommand,
  openCommand,
  quitCommand,
  readCommand,
  readvCommand,
  removeBreakCommand,
  reopenCommand,
  resumeCommand,
  sigraiseCommand,
  sleepCommand,
  truncateCommand,
  waitBreakCommand,
  writeCommand,
  writevCommand
]

const findCommand = (name: string): IoCommand | undefined => IO_COMMANDS.find((c) => c.name === name || c.alias === name)

const argCountMessage = (command: IoCommand, argc: number): string => {
  const prefix = `bad argument count ${argc} to ${command.name}, expected`
  if (command.argmax === -1) return `${prefix} at least ${command.argmin} arguments`
  if (command.argmin === command.argmax) return `${prefix} ${command.argmin} arguments`
  return `${prefix} between ${command.argmin} and ${command.argmax} arguments`
}

/** Runs one qemu-io command line; false when it failed (qemu-io then exits 1). */
export const runIoCommand = (session: IoSession, line: string): Effect.Effect<boolean, never, ImageEnv> =>
  Effect.suspend(() => {
    const words = breakline(line)
    if (words.length === 0) return Effect.succeed(true)
    const name = words[0]!
    const command = findCommand(name)
    if (command === undefined) {
      eprint(`command "${name}" not found\n`)
      return Effect.succeed(false)
    }
    const image = session.image
    if (command.needsFile && image === undefined) {
      eprint("no file open, try 'help open'\n")
      return Effect.succeed(false)
    }
    return runParsed(session, command, image, words.slice(1))
  })

/** The rest of command(): argument count, write permission, options, then the command itself. */
const runParsed = (
  session: IoSession,
  command: IoCommand,
  image: Image | undefined,
  args: ReadonlyArray<string>
): Effect.Effect<boolean, never, ImageEnv> => {
  if (args.length < command.argmin || (command.argmax !== -1 && args.length > command.argmax)) {
    eprint(argCountMessage(command, args.length) + "\n")
    return Effect.succeed(false)
  }
  if (command.writes === true && image?.readOnly === true) {
    errorReport("Block node is read-only")
    return Effect.succeed(false)
  }
  let parsed: GetoptResult = { options: [], operands: [...args] }
  if (command.optstring !== undefined) {
    const outcome = getopt(command.name, args, command.optstring)
    if (!outcome.ok) {
      eprint(outcome.message + "\n")
      printUsage(command)
      return Effect.succeed(false)
    }
    parsed = outcome.result
  }
  if (!command.needsFile) return command.run(session, parsed)
  return image !== undefined ? command.run({ image, session }, parsed) : Effect.succeed(false)
}
