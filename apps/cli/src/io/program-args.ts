/**
 * qemu-io's own command line (qemu-io.c main, QEMU 7.2), parsed with GNU
 * getopt_long's rules: options and operands in any order, "--" ends the
 * options, clustered short flags ("-rU"), glued or separate values ("-fqcow2",
 * "-f qcow2"), "--name=value" or "--name value", unambiguous prefixes of
 * long names ("--cach"), and repeated options (the last -f wins, every -c
 * counts). Errors carry getopt's own wording.
 */

/** The long options in qemu-io's table order (an ambiguity lists them in this order); value: takes an argument. */
const LONG_OPTIONS: ReadonlyArray<readonly [name: string, key: string, takesArgument: boolean]> = [
  ["help", "h", false],
  ["version", "V", false],
  ["cmd", "c", true],
  ["format", "f", true],
  ["read-only", "r", false],
  ["snapshot", "s", false],
  ["nocache", "n", false],
  ["copy-on-read", "C", false],
  ["misalign", "m", false],
  ["native-aio", "k", false],
  ["aio", "i", true],
  ["discard", "d", true],
  ["cache", "t", true],
  ["trace", "T", true],
  ["object", "object", true],
  ["image-opts", "image-opts", false],
  ["force-share", "U", false]
]

/** qemu-io's short options: letter → takes an argument ("hVc:d:f:rsnCmki:t:T:U"). */
const SHORT_OPTIONS: ReadonlyMap<string, boolean> = new Map([
  ["h", false],
  ["V", false],
  ["c", true],
  ["d", true],
  ["f", true],
  ["r", false],
  ["s", false],
  ["n", false],
  ["C", false],
  ["m", false],
  ["k", false],
  ["i", true],
  ["t", true],
  ["T", true],
  ["U", false]
])

/** One option as given: its key (the short letter, or the long name of a long-only option) and value. */
export interface ProgramOption {
  readonly key: string
  readonly value: string | undefined
}

/**
 * The options in order, the operands, and getopt's message (without the
 * program-name prefix) for a bad option: qemu-io acts on the options before
 * it, in order, so an earlier bad value is reported first.
 */
export interface ProgramArgs {
  readonly options: ReadonlyArray<ProgramOption>
  readonly operands: ReadonlyArray<string>
  readonly error?: string
}

type LongMatch = { readonly ok: true; readonly key: string; readonly takesArgument: boolean; readonly name: string } | { readonly ok: false; readonly message: string }

const matchLong = (given: string): LongMatch => {
  const exact = LONG_OPTIONS.find(([name]) => name === given)
  const candidates = exact !== undefined ? [exact] : LONG_OPTIONS.filter(([name]) => name.startsWith(given))
  if (candidates.length === 0) return { ok: false, message: `unrecognized option '--${given}'` }
  if (candidates.length > 1) {
    return { ok: false, message: `option '--${given}' is ambiguous; possibilities:${candidates.map(([n]) => ` '--${n}'`).join("")}` }
  }
  const [name, key, takesArgument] = candidates[0]!
  return { ok: true, key, takesArgument, name }
}

/** Parses qemu-io's arguments (everything after the program name). */
export const parseProgramArgs = (args: ReadonlyArray<string>): ProgramArgs => {
  const options: ProgramOption[] = []
  const operands: string[] = []
  for (let i = 0; i < args.length; i++) {
    const word = args[i]!
    if (word === "--") {
      operands.push(...args.slice(i + 1))
      break
    }
    if (word.startsWith("--")) {
      const eq = word.indexOf("=")
      const given = eq === -1 ? word.slice(2) : word.slice(2, eq)
      const match = matchLong(given)
      if (!match.ok) return { options, operands, error: match.message }
      if (!match.takesArgument) {
        if (eq !== -1) return { options, operands, error: `option '--${match.name}' doesn't allow an argument` }
        options.push({ key: match.key, value: undefined })
      } else if (eq !== -1) {
        options.push({ key: match.key, value: word.slice(eq + 1) })
      } else if (i + 1 < args.length) {
        options.push({ key: match.key, value: args[++i]! })
      } else {
        return { options, operands, error: `option '--${match.name}' requires an argument` }
      }
      continue
    }
    if (word.length < 2 || !word.startsWith("-")) {
      operands.push(word)
      continue
    }
    for (let j = 1; j < word.length; j++) {
      const letter = word[j]!
      const takesArgument = SHORT_OPTIONS.get(letter)
      if (takesArgument === undefined) return { options, operands, error: `invalid option -- '${letter}'` }
      if (!takesArgument) {
        options.push({ key: letter, value: undefined })
        continue
      }
      if (j + 1 < word.length) options.push({ key: letter, value: word.slice(j + 1) })
      else if (i + 1 < args.length) options.push({ key: letter, value: args[++i]! })
      else return { options, operands, error: `option requires an argument -- '${letter}'` }
      break
    }
  }
  return { options, operands }
}
