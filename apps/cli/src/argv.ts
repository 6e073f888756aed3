/**
 * getopt habits effect/cli does not know, rewritten into forms it parses:
 * an option value glued to its letter ("-fqcow2", "-Oraw", "-S4k") and
 * clusters that end in a value-taking letter ("-pO raw"). Clusters of
 * flags ("-rU") effect/cli handles itself, but they are expanded too so
 * one rule covers both.
 */

/** Per subcommand: its getopt optstring (letters followed by ':' take a value). */
export const OPTSTRINGS: Readonly<Record<string, string>> = {
  info: "f:hU",
  map: "f:hU",
  convert: "hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
  io: "f:rc:hU",
  create: "F:b:f:ho:qu",
  check: "hf:r:T:qU",
  compare: "hf:F:T:pqsU"
}

/** Long options that take a value as the next word (so that word is never rewritten). */
const VALUE_LONGS = new Set([
  "--output",
  "--object",
  "--start-offset",
  "--max-length",
  "--passphrase-file",
  "--format",
  "--target-format",
  "--options",
  "--sparse-size",
  "--backing",
  "--backing-format",
  "--parallel",
  "--cache",
  "--source-cache",
  "--snapshot",
  "--rate-limit",
  "--cmd",
  "--repair",
  "--format2"
])

const parseOptstring = (optstring: string): Map<string, boolean> => {
  const m = new Map<string, boolean>()
  for (let i = 0; i < optstring.length; i++) {
    const c = optstring[i]!
    if (c !== ":") m.set(c, optstring[i + 1] === ":")
  }
  return m
}

/** Rewrites `args` (everything after the subcommand name) for `subcommand`. */
export const normalizeArgs = (subcommand: string, args: ReadonlyArray<string>): string[] => {
  const optstring = OPTSTRINGS[subcommand]
  if (optstring === undefined) return [...args]
  const spec = parseOptstring(optstring)
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
      if (spec.get(word[1]!) === true && i + 1 < args.length) out.push(args[++i]!)
      continue
    }
    // A cluster: expand only if every letter up to a value-taking one is known.
    const expanded: string[] = []
    let valid = true
    for (let j = 1; j < word.length; j++) {
      const c = word[j]!
      const takes = spec.get(c)
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
