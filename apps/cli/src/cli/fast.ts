/**
 * A small parser for the valid command lines of `spec.ts`, following
 * effect/cli's rules (effect/dist/cli/internal/lexer.js and parser.js of
 * effect 4.1): `--name value`, `--name=value`, `-x value`, `-x=value`,
 * clusters of short flags (`-Uq`), flags before or after arguments, and
 * `--` ending the options. Whatever it is not sure about (help, version,
 * unknown or repeated flags, missing values, `--no-…` negations, a boolean
 * flag followed by a word like "yes", wrong argument counts) makes it return
 * undefined, and the caller hands the command line to effect/cli, which then
 * prints help or the error message.
 */
import { COMMANDS, type CommandName, type CommandSpec, type FlagSpec, type Parsed } from "./spec.js"

type Token =
  | { readonly tag: "value"; readonly value: string }
  | { readonly tag: "flag"; readonly name: string; readonly value: string | undefined }

const NEGATIVE_NUMBER = /^-(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/

/** Words effect/cli takes as the value of a boolean flag that precedes them. */
const BOOLEAN_WORDS = new Set(["true", "yes", "on", "1", "y", "false", "no", "off", "0", "n"])

const lex = (args: ReadonlyArray<string>): Token[] => {
  const tokens: Token[] = []
  for (const arg of args) {
    if (!arg.startsWith("-") || NEGATIVE_NUMBER.test(arg)) {
      tokens.push({ tag: "value", value: arg })
    } else if (arg.startsWith("--")) {
      const eq = arg.indexOf("=")
      if (eq === -1) tokens.push({ tag: "flag", name: arg.slice(2), value: undefined })
      else if (eq === 2) tokens.push({ tag: "value", value: arg })
      else tokens.push({ tag: "flag", name: arg.slice(2, eq), value: arg.slice(eq + 1) })
    } else if (arg.length > 1) {
      const letters = arg.slice(1)
      const eq = letters.indexOf("=")
      if (eq === -1) {
        for (const ch of letters) tokens.push({ tag: "flag", name: ch, value: undefined })
      } else {
        const chars = Array.from(letters.slice(0, eq))
        const last = chars.pop() ?? ""
        for (const ch of chars) tokens.push({ tag: "flag", name: ch, value: undefined })
        tokens.push({ tag: "flag", name: last, value: letters.slice(eq + 1) })
      }
    } else {
      tokens.push({ tag: "value", value: arg })
    }
  }
  return tokens
}

/** Parses the words of `spec`'s command line (after its name); undefined = let effect/cli decide. */
const parseCommand = (spec: CommandSpec, tokens: ReadonlyArray<Token>, trailing: ReadonlyArray<string>): Record<string, unknown> | undefined => {
  const byName = new Map<string, string>()
  for (const [key, flag] of Object.entries(spec.flags)) {
    byName.set(flag.name, key)
    if (flag.alias !== undefined) byName.set(flag.alias, key)
  }
  const seen = new Map<string, string[]>()
  const positional: string[] = []
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    if (token.tag === "value") {
      positional.push(token.value)
      continue
    }
    const key = byName.get(token.name)
    if (key === undefined) return undefined
    const flag = spec.flags[key]!
    let value: string
    if (flag.kind === "boolean") {
      if (token.value !== undefined) return undefined
      const next = tokens[i + 1]
      if (next !== undefined && next.tag === "value" && BOOLEAN_WORDS.has(next.value)) return undefined
      value = "true"
    } else if (token.value !== undefined) {
      value = token.value
    } else {
      const next = tokens[i + 1]
      if (next === undefined || next.tag !== "value") return undefined
      value = next.value
      i++
    }
    const list = seen.get(key)
    // As qemu-img's getopt: a flag given again is no error; the last one wins.
    if (list !== undefined && flag.kind === "repeat") list.push(value)
    else seen.set(key, [value])
  }
  const values: Record<string, unknown> = {}
  for (const [key, flag] of Object.entries(spec.flags)) {
    const given = seen.get(key)
    const v = flagValue(flag, given)
    if (v === INVALID) return undefined
    values[key] = v
  }
  positional.push(...trailing)
  const args = Object.entries(spec.args)
  let next = 0
  for (const [key, arg] of args) {
    if (arg.kind === "one") {
      if (next >= positional.length) return undefined
      values[key] = positional[next++]
    } else if (arg.kind === "optional") {
      values[key] = next < positional.length ? positional[next++] : undefined
    } else {
      values[key] = positional.slice(next)
      next = positional.length
    }
  }
  if (next !== positional.length) return undefined
  return values
}

const INVALID = Symbol("invalid")

const flagValue = (flag: FlagSpec, given: ReadonlyArray<string> | undefined): unknown => {
  switch (flag.kind) {
    case "boolean":
      return given !== undefined
    case "repeat":
      return given ?? []
    case "string":
      return given?.[0]
    case "stringDefault":
      return given?.[0] ?? flag.default
    case "choice": {
      const v = given?.[0] ?? flag.default
      return flag.choices.includes(v) ? v : INVALID
    }
  }
}

/**
 * Parses a normalised command line (see argv.ts) when it is a plain, valid
 * use of one subcommand; undefined otherwise.
 */
export const fastParse = (argv: ReadonlyArray<string>): Parsed | undefined => {
  const end = argv.indexOf("--")
  const tokens = lex(end === -1 ? argv : argv.slice(0, end))
  const trailing = end === -1 ? [] : argv.slice(end + 1)
  const first = tokens[0]
  if (first === undefined || first.tag !== "value" || !Object.hasOwn(COMMANDS, first.value)) return undefined
  const command = first.value as CommandName
  const values = parseCommand(COMMANDS[command], tokens.slice(1), trailing)
  if (values === undefined) return undefined
  return { command, values } as Parsed
}
