/**
 * qemu-io's command loop over standard input: with no -c commands it reads
 * one command per line and runs each as it arrives. A terminal gets line
 * editing and the "qemu-io> " prompt; from a pipe or file, qemu-io still
 * prints the prompt before every line it reads (and once more at the end
 * of the input), with no newline, so output reads "qemu-io> wrote …".
 */
import * as readline from "node:readline"
import { Effect } from "effect"
import { flushOutput, print } from "../output.js"

const PROMPT = "qemu-io> "

/**
 * Runs `run` on each line of standard input, in order, each after the one
 * before has finished, until the input ends or `stop()` says so.
 */
export const readCommandLines = <R>(run: (line: string) => Effect.Effect<void, never, R>, stop: () => boolean): Effect.Effect<void, never, R> =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const terminal = process.stdin.isTTY === true
      const rl = readline.createInterface({
        input: process.stdin,
        ...(terminal ? { output: process.stdout, terminal: true, prompt: PROMPT } : { terminal: false })
      })
      return { rl, lines: rl[Symbol.asyncIterator](), terminal }
    }),
    ({ rl, lines, terminal }) =>
      Effect.gen(function* () {
        while (!stop()) {
          if (terminal) {
            rl.prompt()
          } else {
            print(PROMPT)
            flushOutput()
          }
          const next = yield* Effect.promise(() => lines.next())
          if (next.done === true) break
          yield* run(next.value)
        }
      }),
    ({ rl }) =>
      Effect.sync(() => {
        rl.close()
        process.stdin.destroy()
      })
  )
