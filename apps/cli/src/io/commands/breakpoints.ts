/**
 * blkdebug's breakpoint commands. They act on a blkdebug node, which this
 * toolkit does not have, so each fails as qemu-io's does on an image
 * without one ("Operation not supported").
 */
import { Effect } from "effect"
import { print } from "../../output.js"
import type { IoCommand } from "../command.js"

const unsupported = (message: string) => Effect.sync(() => (print(`${message}: Operation not supported\n`), false))

export const breakCommand: IoCommand = {
  name: "break",
  needsFile: true,
  argmin: 2,
  argmax: 2,
  args: "event tag",
  oneline: "sets a breakpoint on event and tags the stopped request as tag",
  run: () => unsupported("Could not set breakpoint")
}

export const removeBreakCommand: IoCommand = {
  name: "remove_break",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "remove a breakpoint by tag",
  run: (_ctx, p) => unsupported(`Could not remove breakpoint ${p.operands[0]}`)
}

export const resumeCommand: IoCommand = {
  name: "resume",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "resumes the request tagged as tag",
  run: () => unsupported("Could not resume request")
}

export const waitBreakCommand: IoCommand = {
  name: "wait_break",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "waits for the suspension of a request",
  run: () => Effect.sync(() => (print("wait_break: no blkdebug breakpoint can be reached here\n"), false))
}
