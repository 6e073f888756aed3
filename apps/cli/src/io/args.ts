/** Reading a qemu-io command's parsed options and operands, with qemu-io's error texts. */
import { print } from "../output.js"
import { errorReport } from "../progname.js"
import { parseSize } from "../text/strtosz.js"
import type { GetoptResult } from "./getopt.js"

/** Whether option `letter` was given. */
export const hasOption = (parsed: GetoptResult, letter: string): boolean => parsed.options.some(([o]) => o === letter)

/** The argument of the last occurrence of option `letter`; undefined when it was not given. */
export const optionArgument = (parsed: GetoptResult, letter: string): string | undefined => {
  let argument: string | undefined
  for (const [o, a] of parsed.options) if (o === letter) argument = a
  return argument
}

/** A size or offset (qemu-io's cvtnum); undefined after printing the parse error. */
export const parseSizeArgument = (text: string): number | undefined => {
  const r = parseSize(text)
  if (r.ok) {
    if (r.hexWithSuffix) errorReport(`warning: Using a multiplier suffix on hex numbers is deprecated: ${text}`)
    return r.value
  }
  print(
    r.reason === "range"
      ? `Parsing error: argument too large -- ${text}\n`
      : `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}\n`
  )
  return undefined
}

/** A -P pattern byte: strtol with base 0, 0..255; undefined after printing the error. */
export const parsePatternArgument = (text: string): number | undefined => {
  let value: number
  if (/^[-+]?0[xX][0-9a-fA-F]+$/.test(text)) value = parseInt(text, 16)
  else if (/^[-+]?0[0-7]*$/.test(text)) value = parseInt(text, 8)
  else if (/^[-+]?[1-9][0-9]*$/.test(text)) value = parseInt(text, 10)
  else value = Number.NaN
  if (!(value >= 0 && value <= 255)) {
    print(`${text} is not a valid pattern byte\n`)
    return undefined
  }
  return value
}
