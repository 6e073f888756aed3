/** qemu-io's commands about the process itself: quit, sleep, abort, sigraise. */
import * as os from "node:os"
import { Effect } from "effect"
import { flushOutput, print } from "../../output.js"
import { parseSizeArgument } from "../args.js"
import type { IoCommand } from "../command.js"
import { sigraiseHelp } from "../help-texts.js"

/** `quit`: no further commands run; the image is closed as at the end of the input. */
export const quitCommand: IoCommand = {
  name: "quit",
  needsFile: false,
  alias: "q",
  argmin: 0,
  argmax: 0,
  oneline: "exit the program",
  run: (session) => Effect.sync(() => ((session.quitRequested = true), true))
}

/** strtol(text, &end, 0) that must use the whole word: decimal, 0x hex or 0 octal, optional sign. */
const parseCInteger = (text: string): number | undefined => {
  const m = /^\s*([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text)
  if (m === null) return undefined
  const digits = m[2]!
  const value = /^0[xX]/.test(digits) ? parseInt(digits.slice(2), 16) : digits.startsWith("0") ? parseInt(digits, 8) : parseInt(digits, 10)
  return m[1] === "-" ? -value : value
}

/** `sleep MS`: waits that many milliseconds. */
export const sleepCommand: IoCommand = {
  name: "sleep",
  needsFile: false,
  argmin: 1,
  argmax: 1,
  oneline: "waits for the given value in milliseconds",
  run: (session, p) =>
    Effect.suspend(() => {
      const text = p.operands[0]!
      const ms = parseCInteger(text)
      if (ms === undefined || ms < 0) {
        print(`${text} is not a valid number\n`)
        return Effect.succeed(false)
      }
      // qemu-io's main loop runs meanwhile: the aio requests that completed are delivered.
      return Effect.sleep(ms).pipe(Effect.andThen(Effect.sync(() => session.requests.deliver())), Effect.as(true))
    })
}

/** Signals main.ts leaves without effect, as the QEMU tools block them: raising one changes nothing. */
const BLOCKED_SIGNALS = new Set(["SIGUSR1", "SIGALRM", "SIGIO"])

/** Linux's NSIG: signal numbers above it are refused. */
const NSIG = 65

/**
 * Raises `signal` with its default action, as qemu-io's raise() does: the
 * listeners main.ts installs (which close images cleanly) go first, so
 * SIGKILL, SIGTERM or SIGABRT end the process at once with the image as it
 * is on disk. The output of the finished commands is written out first.
 */
const raiseSignal = (signal: number): void => {
  flushOutput()
  const name = Object.entries(os.constants.signals).find(([, n]) => n === signal)?.[0]
  if (name !== undefined && BLOCKED_SIGNALS.has(name)) return
  if (name !== undefined) process.removeAllListeners(name)
  try {
    process.kill(process.pid, signal)
  } catch {
    // raise() of a number that names no signal fails and changes nothing.
  }
}

/** `abort`: dies of SIGABRT, as a crash would (qemu-io calls abort()). */
export const abortCommand: IoCommand = {
  name: "abort",
  needsFile: false,
  argmin: 0,
  argmax: 0,
  oneline: "simulate a program crash using abort(3)",
  run: () => Effect.sync(() => (raiseSignal(os.constants.signals.SIGABRT), true))
}

/** `sigraise SIGNAL`: raises the signal (`sigraise 9` kills the process without closing the image). */
export const sigraiseCommand: IoCommand = {
  name: "sigraise",
  needsFile: false,
  argmin: 1,
  argmax: 1,
  args: "signal",
  oneline: "raises a signal",
  help: sigraiseHelp,
  run: (_session, p) =>
    Effect.sync(() => {
      const text = p.operands[0]!
      const signal = parseSizeArgument(text)
      if (signal === undefined) return false
      if (signal > NSIG) {
        print(`signal argument '${text}' is too large to be a valid signal\n`)
        return false
      }
      if (signal !== 0) raiseSignal(signal)
      return true
    })
}
