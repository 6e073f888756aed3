/**
 * The shape of a qemu-io command (qemu-io's cmdinfo_t): its name and alias,
 * argument counts, getopt optstring, help texts and what it does.
 */
import type { Effect } from "effect"
import type { Image } from "@qcow2/image"
import type { ImageEnv } from "../env.js"
import { print } from "../output.js"
import type { GetoptResult } from "./getopt.js"
import type { IoSession } from "./session.js"

/** What a command that needs an image works on. */
export interface IoContext {
  readonly image: Image
  readonly session: IoSession
}

interface CommandInfo {
  readonly name: string
  /** One-letter short name ("r" for read). */
  readonly alias?: string
  /** Fewest words after the name. */
  readonly argmin: number
  /** Most words after the name; -1: unlimited. */
  readonly argmax: number
  /** getopt's optstring; undefined: the words are operands, unparsed (commands that take no options). */
  readonly optstring?: string
  /** Synopsis of the options and operands; undefined for commands that take none ("abort -- …"). */
  readonly args?: string
  readonly oneline: string
  /** The extended help `help NAME` prints after the synopsis. */
  readonly help?: string
  /** Needs write permission: on a read-only image it fails before parsing anything ("Block node is read-only"). */
  readonly writes?: boolean
}

/** A command that works on the open image ("no file open" otherwise). */
export interface FileCommand extends CommandInfo {
  readonly needsFile: true
  /** Runs the command; false when it failed (qemu-io then exits 1). */
  readonly run: (ctx: IoContext, parsed: GetoptResult) => Effect.Effect<boolean, never, ImageEnv>
}

/** A command that works with or without an open image (qemu-io's CMD_NOFILE_OK). */
export interface SessionCommand extends CommandInfo {
  readonly needsFile: false
  readonly run: (session: IoSession, parsed: GetoptResult) => Effect.Effect<boolean, never, ImageEnv>
}

export type IoCommand = FileCommand | SessionCommand

/** The one-line synopsis `help` lists: "name args -- oneline". */
export const synopsis = (command: IoCommand): string =>
  `${command.name}${command.args !== undefined ? ` ${command.args}` : ""} -- ${command.oneline}`

/** The usage line qemu-io prints for a misused command. */
export const printUsage = (command: IoCommand): void => {
  print(`${synopsis(command)}\n`)
}
