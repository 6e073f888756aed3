/**
 * qemu-io's commands (qemu-io-cmds.c) by name, and the runner of one
 * command line: split it, find the command, check the argument count,
 * parse its options, run it. Each command lives in commands/.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import type { StorageOpener } from "@qcow2/storage"
import { eprint } from "../output.js"
import { printUsage, type IoCommand, type IoContext } from "./command.js"
import { allocCommand } from "./commands/alloc.js"
import { discardCommand } from "./commands/discard.js"
import { flushCommand } from "./commands/flush.js"
import { infoCommand } from "./commands/info.js"
import { lengthCommand } from "./commands/length.js"
import { mapCommand } from "./commands/map.js"
import { readCommand } from "./commands/read.js"
import { truncateCommand } from "./commands/truncate.js"
import { writeCommand } from "./commands/write.js"
import { breakline, getopt } from "./getopt.js"

const IO_COMMANDS: ReadonlyArray<IoCommand> = [
  readCommand,
  writeCommand,
  discardCommand,
  flushCommand,
  truncateCommand,
  lengthCommand,
  infoCommand,
  mapCommand,
  allocCommand
]

const findCommand = (name: string): IoCommand | undefined => IO_COMMANDS.find((c) => c.name === name || c.alias === name)

const argCountMessage = (command: IoCommand, argc: number): string => {
  const prefix = `bad argument count ${argc} to ${command.name}, expected`
  if (command.argmax === -1) return `${prefix} at least ${command.argmin} arguments`
  if (command.argmin === command.argmax) return `${prefix} ${command.argmin} arguments`
  return `${prefix} between ${command.argmin} and ${command.argmax} arguments`
}

/** Runs one qemu-io command line; false when it failed (qemu-io then exits 1). */
export const runIoCommand = (ctx: IoContext, line: string): Effect.Effect<boolean, never, StorageOpener | Scope.Scope> =>
  Effect.suspend(() => {
    const words = breakline(line)
    if (words.length === 0) return Effect.succeed(true)
    const name = words[0]!
    const command = findCommand(name)
    if (command === undefined) {
      eprint(`command "${name}" not found\n`)
      return Effect.succeed(false)
    }
    const args = words.slice(1)
    if (args.length < command.argmin || (command.argmax !== -1 && args.length > command.argmax)) {
      eprint(argCountMessage(command, args.length) + "\n")
      return Effect.succeed(false)
    }
    const parsed = getopt(command.name, args, command.optstring)
    if (!parsed.ok) {
      eprint(parsed.message + "\n")
      printUsage(command)
      return Effect.succeed(false)
    }
    return command.run(ctx, parsed.result)
  })
