/**
 * Command-line pieces of qemu-io: its commands are split on spaces (no
 * quoting, qemu-io's breakline) and parsed with GNU getopt, which permutes
 * operands after options ("read 0 16 -v" works) and accepts clustered
 * flags ("-vP0" = -v -P 0).
 */

/** Splits a qemu-io command line on spaces, dropping empty words. */
export const breakline = (line: string): string[] => line.split(" ").filter((w) => w !== "")

export interface GetoptResult {
  readonly options: Array<readonly [string, string | undefined]>
  readonly operands: string[]
}

export type GetoptOutcome =
  | { readonly ok: true; readonly result: GetoptResult }
  | { readonly ok: false; readonly message: string }

/**
 * GNU getopt over `args` (the words after the command name) with a POSIX
 * optstring ("bCl:pP:qs:v"). "--" ends options; an unknown option or a
 * missing argument gives getopt's message ("invalid option -- 'x'").
 */
export const getopt = (command: string, args: ReadonlyArray<string>, optstring: string): GetoptOutcome => {
  const takesArg = new Map<string, boolean>()
  for (let i = 0; i < optstring.length; i++) {
    const c = optstring[i]!
    if (c === ":") continue
    takesArg.set(c, optstring[i + 1] === ":")
  }
  const options: Array<readonly [string, string | undefined]> = []
  const operands: string[] = []
  for (let i = 0; i < args.length; i++) {
    const word = args[i]!
    if (word === "--") {
      operands.push(...args.slice(i + 1))
      break
    }
    if (word.length < 2 || !word.startsWith("-")) {
      operands.push(word)
      continue
    }
    for (let j = 1; j < word.length; j++) {
      const c = word[j]!
      const needs = takesArg.get(c)
      if (needs === undefined) return { ok: false, message: `${command}: invalid option -- '${c}'` }
      if (!needs) {
        options.push([c, undefined])
        continue
      }
      if (j + 1 < word.length) {
        options.push([c, word.slice(j + 1)])
      } else if (i + 1 < args.length) {
        options.push([c, args[i + 1]!])
        i++
      } else {
        return { ok: false, message: `${command}: option requires an argument -- '${c}'` }
      }
      break
    }
  }
  return { ok: true, result: { options, operands } }
}
