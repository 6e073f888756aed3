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
 * Bundled into dist/qcow2.cjs, which `entry.ts` (dist/qcow2.mjs) runs.
 */
import { Effect } from "effect"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { normalizeArgv } from "./argv.js"
import { fastParse } from "./cli/fast.js"
import type { Parsed } from "./cli/spec.js"
import { exitStatus, flushOutput } from "./output.js"

const argv = normalizeArgv(process.argv.slice(2))
const parsed = fastParse(argv)

const run = (p: Parsed): Effect.Effect<void> =>
  Effect.promise(() => import("./cli/dispatch.js")).pipe(Effect.flatMap((d) => d.execute(d.commandBody(p), d.hasSecrets(p))))

const program: Effect.Effect<void> =
  parsed !== undefined ? run(parsed) : Effect.promise(() => import("./cli/effect-cli.js")).pipe(Effect.flatMap((m) => m.runWithEffectCli(argv, run)))

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  teardown: (_exit, onExit) => {
    flushOutput()
    process.exitCode = exitStatus.code
    onExit(0)
  }
})
