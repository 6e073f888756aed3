/**
 * qcow2: a qemu-img / qemu-io style command-line tool over @qcow2/image.
 *
 * `argv.ts` first rewrites getopt habits (glued option values such as
 * "-fqcow2"). A plain, valid command line is parsed by `cli/fast.ts` and
 * runs without loading effect/cli; anything else (--help, --version,
 * mistakes) goes to effect/cli, loaded on demand (`cli/effect-cli.ts`).
 * Command code is loaded on demand too (`cli/dispatch.ts`), so start-up
 * only pays for what the command uses. Every command returns an exit code;
 * failures print "qcow2: <message>" and never a stack trace.
 *
 * Signals: SIGINT, SIGTERM and SIGHUP interrupt the command's fiber, so
 * its scopes close (images flushed and closed, metadata consistent), and
 * then the process dies of that signal, as qemu-img does (a shell reports
 * 128 + the signal number: 130, 143, 129). A job that was signalled never
 * exits 0, even if it was about to finish. A second signal while stopping
 * ends the process at once. SIGUSR1, SIGALRM and SIGIO, which the QEMU
 * tools block, do nothing; output to a closed pipe is dropped (see below).
 *
 * Bundled into dist/qcow2.cjs, which `entry.ts` (dist/qcow2.mjs) runs.
 */
import * as os from "node:os"
import { Effect, Exit, Runtime } from "effect"
import { normalizeArgv } from "./argv.js"
import { fastParse } from "./cli/fast.js"
import type { Parsed } from "./cli/spec.js"
import { helpText, rootAction, versionText, type RootAction } from "./cli/root.js"
import { eprint, exitStatus, flushOutput, print } from "./output.js"
import { programName, qemuIoArguments } from "./progname.js"

const run = (p: Parsed): Effect.Effect<void> =>
  Effect.promise(() => import("./cli/dispatch.js")).pipe(Effect.flatMap((d) => d.execute(d.commandBody(p), d.hasSecrets(p))))

/** qemu-io's command line is its own (commands/io.ts parses it), not one for effect/cli. */
const runQemuIo = (args: ReadonlyArray<string>): Effect.Effect<void> =>
  Effect.promise(() => Promise.all([import("./cli/dispatch.js"), import("./commands/io.js")])).pipe(
    Effect.flatMap(([d, io]) => d.execute(io.runQemuIo(args), io.qemuIoHasSecrets(args)))
  )

/** `qcow2`, `qcow2 -V`, `qcow2 --help`, `qcow2 -x`: answered here, as qemu-img answers them (cli/root.ts). */
const runRoot = (action: Exclude<RootAction, { kind: "command" }>): Effect.Effect<void> =>
  Effect.sync(() => {
    switch (action.kind) {
      case "help":
        return print(helpText(programName))
      case "version":
        return print(versionText(programName))
      case "usage":
        eprint(`${programName}: ${action.message}\nTry '${programName} --help' for more information\n`)
        exitStatus.code = 1
    }
  })

const parseAndRun = (): Effect.Effect<void> => {
  const argv = normalizeArgv(process.argv.slice(2))
  const root = rootAction(argv)
  if (root.kind !== "command") return runRoot(root)
  const parsed = fastParse(argv)
  return parsed !== undefined ? run(parsed) : Effect.promise(() => import("./cli/effect-cli.js")).pipe(Effect.flatMap((m) => m.runWithEffectCli(argv, run)))
}

const ioArgs = qemuIoArguments(process.argv.slice(2))
const program: Effect.Effect<void> = ioArgs !== undefined ? runQemuIo(ioArgs) : parseAndRun()

/**
 * The signals that stop a job cleanly (their default action ends the
 * process). `serve` handles them itself: for an NBD server, as for
 * qemu-nbd, they are the normal way to end (exit 0).
 */
const STOP_SIGNALS: ReadonlyArray<NodeJS.Signals> =
  ioArgs === undefined && normalizeArgv(process.argv.slice(2))[0] === "serve" ? [] : ["SIGINT", "SIGTERM", "SIGHUP"]

/**
 * Signals the QEMU tools block for their own use (their main loop), so that
 * they change nothing for a qemu-img or qemu-io job: here too, instead of
 * ending the process without closing its images (SIGALRM, SIGIO) or
 * opening Node's debugger port (SIGUSR1, which a listener disables).
 */
const IGNORED_SIGNALS: ReadonlyArray<NodeJS.Signals> = ["SIGUSR1", "SIGALRM", "SIGIO"]
for (const s of IGNORED_SIGNALS) process.on(s, () => {})

/**
 * Ends the process by `signal`, as if it had not been caught: the listeners
 * go, so the default action (terminate) applies when it is raised again.
 * Should the signal not end the process (a parent that blocks it), exit
 * with 128 + its number, the status a shell reports for a signal death.
 */
const dieOf = (signal: NodeJS.Signals): never => {
  flushOutput()
  for (const s of STOP_SIGNALS) process.removeAllListeners(s)
  try {
    process.kill(process.pid, signal)
  } catch {
    // fall through to exit
  }
  return process.exit(128 + (os.constants.signals[signal] ?? 0))
}

const runMain = Runtime.makeRunMain(({ fiber, teardown }) => {
  let received: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    if (received !== undefined) dieOf(signal)
    received = signal
    fiber.interruptUnsafe(fiber.id)
  }
  for (const s of STOP_SIGNALS) process.on(s, onSignal)
  fiber.addObserver((exit) => {
    teardown(exit, (code) => {
      flushOutput()
      if (received !== undefined) dieOf(received)
      for (const s of STOP_SIGNALS) process.removeListener(s, onSignal)
      process.exitCode = code
    })
  })
})

runMain(program, {
  disableErrorReporting: true,
  // A failure that reached this point unreported (a defect, an
  // interruption without a signal) still must not exit 0.
  teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) || exitStatus.code !== 0 ? exitStatus.code : 1)
})
