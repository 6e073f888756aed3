/**
 * The shape of a qemu-io command (qemu-io's cmdinfo_t): its name and alias,
 * argument counts, getopt optstring, help text and what it does.
 */
import type { Effect, Scope } from "effect"
import type { StorageOpener } from "@qcow2/storage"
import type { Image } from "@qcow2/image"
import { eprint, print } from "../output.js"
import type { GetoptResult } from "./getopt.js"

/** What a command works on: the image `qcow2 io` opened. */
export interface IoContext {
  readonly image: Image
}

export interface IoCommand {
  readonly name: string
  /** One-letter short name ("r" for read). */
  readonly alias?: string
  /** Fewest words after the name. */
  readonly argmin: number
  /** Most words after the name; -1: unlimited. */
  readonly argmax: number
  readonly optstring: string
  /** Synopsis of the options and operands, for the usage line. */
  readonly args: string
  readonly oneline: string
  /** Runs the command; false when it failed (qemu-io then exits 1). */
  readonly run: (ctx: IoContext, parsed: GetoptResult) => Effect.Effect<boolean, never, StorageOpener | Scope.Scope>
}

/** The usage line qemu-io prints for a misused command. */
export const printUsage = (command: IoCommand): void => {
  print(`${command.name} ${command.args} -- ${command.oneline}\n`)
}

/** Whether the image refuses writes, after printing QEMU's "Block node is read-only". */
export const refusesWrites = (image: Image): boolean => {
  if (!image.readOnly) return false
  eprint("qcow2: Block node is read-only\n")
  return true
}
