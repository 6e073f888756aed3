/**
 * blkdebug's breakpoint commands, on the first blkdebug node from the top
 * of the image (`blkdebug::FILE`, `file.driver=blkdebug`, or
 * `driver=blkdebug` over the image); see @qcow2/storage/blkdebug's
 * breakpoints. Their messages are qemu-io 7.2's: strerror of ENOTSUP when
 * the image has no blkdebug node, of ENOENT for an unknown event or tag.
 */
import { Effect } from "effect"
import type { BlkdebugBreakpoints } from "@qcow2/storage/blkdebug"
import { print } from "../../output.js"
import type { IoCommand, IoContext } from "../command.js"

const NOT_SUPPORTED = "Operation not supported"
const NOT_FOUND = "No such file or directory"

/** Runs `act` on the image's breakpoints; prints `message` with the error text when there are none or `act` fails. */
const onBreakpoints = (ctx: IoContext, message: string, act: (breakpoints: BlkdebugBreakpoints) => boolean) =>
  Effect.sync(() => {
    const breakpoints = ctx.session.breakpoints
    const ok = breakpoints !== undefined && act(breakpoints)
    if (!ok) print(`${message}: ${breakpoints === undefined ? NOT_SUPPORTED : NOT_FOUND}\n`)
    return ok
  })

export const breakCommand: IoCommand = {
  name: "break",
  needsFile: true,
  argmin: 2,
  argmax: 2,
  args: "event tag",
  oneline: "sets a breakpoint on event and tags the stopped request as tag",
  run: (ctx, p) => onBreakpoints(ctx, "Could not set breakpoint", (b) => b.set(p.operands[0]!, p.operands[1]!))
}

export const removeBreakCommand: IoCommand = {
  name: "remove_break",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "remove a breakpoint by tag",
  run: (ctx, p) => onBreakpoints(ctx, `Could not remove breakpoint ${p.operands[0]}`, (b) => b.remove(p.operands[0]!))
}

export const resumeCommand: IoCommand = {
  name: "resume",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "resumes the request tagged as tag",
  run: (ctx, p) => onBreakpoints(ctx, "Could not resume request", (b) => b.resume(p.operands[0]!))
}

/**
 * `wait_break TAG`: lets the requests in flight run until one is suspended
 * as TAG, delivering the completions on the way. qemu-io waits forever when
 * that cannot happen; here it says so and fails: no blkdebug node, nothing
 * in flight, or every request in flight held elsewhere.
 */
export const waitBreakCommand: IoCommand = {
  name: "wait_break",
  needsFile: true,
  argmin: 1,
  argmax: 1,
  args: "tag",
  oneline: "waits for the suspension of a request",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const tag = p.operands[0]!
      const reached = yield* ctx.session.requests.waitUntil(() => ctx.session.breakpoints?.isSuspended(tag) === true)
      if (!reached) print("wait_break: no blkdebug breakpoint can be reached here\n")
      return reached
    })
}
