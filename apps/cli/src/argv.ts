/**
 * getopt habits effect/cli does not know, rewritten into forms it parses:
 * an option value glued to its letter ("-fqcow2", "-Oraw", "-S4k") and
 * clusters that end in a value-taking letter ("-pO raw"). Clusters of
 * flags ("-rU") effect/cli handles itself, but they are expanded too so
 * one rule covers both.
 *
 * Which letters exist and which take a value comes from the command table
 * in cli/spec.ts: every flag but a boolean one takes a value.
 */
import { COMMANDS, type CommandName, type CommandSpec } from "./cli/spec.js"

/** Short options effect/cli gives every subcommand: -h (help), no value. */
const BUILT_IN_SHORT: ReadonlyArray<readonly [string, boolean]> = [["h", false]]

/**
 * Options of qemu-img that this tool does not implement, but that getopt
 * still splits as qemu-img would ("-lsnap" → "-l snap"), so effect/cli
 * rejects them by name and their values are never rewritten. Short: letter
 * → takes a value; long: names that take a value.
 */
const UNIMPLEMENTED: Partial<Record<CommandName, { readonly short: string; readonly long: ReadonlyArray<string> }>> = {
  // -C (copy offloading), -r rate limit
  convert: { short: "Cr:", long: ["rate-limit"] }
}

const isCommandName = (name: string): name is CommandName => Object.hasOwn(COMMANDS, name)

const takesValue = (spec: CommandSpec, flag: string): boolean => spec.flags[flag]!.kind !== "boolean"

/** The short options of `command`: letter → whether it takes a value (getopt's optstring). */
const shortOptions = (command: CommandName): Map<string, boolean> => {
  const spec: CommandSpec = COMMANDS[command]
  const options = new Map(BUILT_IN_SHORT)
  for (const key of Object.keys(spec.flags)) {
    const alias = spec.flags[key]!.alias
    if (alias !== undefined) options.set(alias, takesValue(spec, key))
  }
  const extra = UNIMPLEMENTED[command]?.short ?? ""
  for (let i = 0; i < extra.length; i++) {
    if (extra[i] !== ":") options.set(extra[i]!, extra[i + 1] === ":")
  }
  return options
}

/** Long options that take a value as the next word, in any subcommand (so that word is never rewritten). */
const VALUE_LONGS: ReadonlySet<string> = new Set(
  (Object.keys(COMMANDS) as CommandName[]).flatMap((command) => {
    const spec: CommandSpec = COMMANDS[command]
    const own = Object.keys(spec.flags).filter((key) => takesValue(spec, key)).map((key) => spec.flags[key]!.name)
    return [...own, ...(UNIMPLEMENTED[command]?.long ?? [])].map((name) => `--${name}`)
  })
)

/** Rewrites `args` (everything after the subcommand name) for `subcommand`. */
export const normalizeArgs = (subcommand: string, args: ReadonlyArray<string>): string[] => {
  if (!isCommandName(subcommand)) return [...args]
  // qemu-img resize takes its last word as the size before getopt sees it,
  // so "-1G" is a size, not an option.
  const last = args[args.length - 1]
  if (subcommand === "resize" && last !== undefined && /^-[^-]/.test(last) && !args.includes("--")) {
    return [...normalizeArgs(subcommand, args.slice(0, -1)), "--", last]
  }
  const options = shortOptions(subcommand)
  const out: string[] = []
  for (let i = 0; i < args.length; i++) {
    const word = args[i]!
    if (word === "--") {
      out.push(...args.slice(i))
      break
    }
    if (word.startsWith("--")) {
      out.push(word)
      if (!word.includes("=") && VALUE_LONGS.has(word) && i + 1 < args.length) out.push(args[++i]!)
      continue
    }
    if (!word.startsWith("-") || word.length < 2) {
      out.push(word)
      continue
    }
    if (word.length === 2) {
      out.push(word)
      if (options.get(word[1]!) === true && i + 1 < args.length) out.push(args[++i]!)
      continue
    }
    // A cluster: expand only if every letter up to a value-taking one is known.
    const expanded: string[] = []
    let valid = true
    for (let j = 1; j < word.length; j++) {
      const c = word[j]!
      const takes = options.get(c)
      if (takes === undefined) {
        valid = false
        break
      }
      expanded.push(`-${c}`)
      if (takes) {
        if (j + 1 < word.length) expanded.push(word.slice(j + 1))
        else if (i + 1 < args.length) expanded.push(args[++i]!)
        break
      }
    }
    if (valid) out.push(...expanded)
    else out.push(word)
  }
  return out
}

/** Normalizes a whole command line: the first word is the subcommand. */
export const normalizeArgv = (argv: ReadonlyArray<string>): string[] => {
  if (argv.length === 0) return []
  return [argv[0]!, ...normalizeArgs(argv[0]!, argv.slice(1))]
}
