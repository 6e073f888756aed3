import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import { hexDump } from "./hex.js"

/** A size argument as qemu-io takes it: a number with an optional k/M/G/T suffix, or 0x hex. */
export const parseSize = (text: string): number | undefined => {
  const m = /^(0x[0-9a-f]+|\d+)([kmgt]?)$/i.exec(text)
  if (m === null) return undefined
  const base = m[1]!.toLowerCase().startsWith("0x") ? parseInt(m[1]!, 16) : Number(m[1])
  const shift = { "": 0, k: 10, m: 20, g: 30, t: 40 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g" | "t"]
  return base * 2 ** shift
}

const HELP = [
  "read [-P pattern] [-v] off len  -- reads and verifies a pattern, or dumps the bytes",
  "write [-P pattern | -z] off len -- writes a pattern (default 0xcd) or zeroes",
  "discard off len                 -- discards the range",
  "map                             -- allocation of the whole image",
  "flush                           -- commits to the storage",
  "length                          -- the virtual size"
].join("\n")

interface Parsed {
  readonly flags: Map<string, string | true>
  readonly args: string[]
}

const parseArgs = (words: string[], withValue: ReadonlySet<string>): Parsed | string => {
  const flags = new Map<string, string | true>()
  const args: string[] = []
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!
    if (w.startsWith("-") && w.length === 2) {
      if (withValue.has(w)) {
        const v = words[++i]
        if (v === undefined) return `option requires an argument -- '${w.slice(1)}'`
        flags.set(w, v)
      } else flags.set(w, true)
    } else args.push(w)
  }
  return { flags, args }
}

const range = (image: Image, args: string[]): { offset: number; length: number } | string => {
  if (args.length !== 2) return "expected an offset and a length"
  const offset = parseSize(args[0]!)
  const length = parseSize(args[1]!)
  if (offset === undefined) return `non-numeric offset argument -- ${args[0]}`
  if (length === undefined) return `non-numeric length argument -- ${args[1]}`
  if (offset + length > image.virtualSize) return `offset ${offset} + length ${length} is past the end of the image (${image.virtualSize})`
  return { offset, length }
}

/**
 * Runs one qemu-io-style command line on the open image and gives its
 * output (qemu-io's wording for the common commands).
 */
export const runCommand = (image: Image, line: string): Effect.Effect<string, never> => {
  const words = line.trim().split(/\s+/).filter((w) => w !== "")
  const [command, ...rest] = words
  const fail = (message: string) => Effect.succeed(`${command}: ${message}`)
  const guarded = (effect: Effect.Effect<string, { readonly message: string }>) =>
    Effect.catch(effect, (e) => Effect.succeed(`${command} failed: ${e.message}`))
  switch (command) {
    case undefined:
      return Effect.succeed("")
    case "help":
      return Effect.succeed(HELP)
    case "length":
      return Effect.succeed(String(image.virtualSize))
    case "flush":
      return guarded(Effect.as(image.flush(), ""))
    case "read": {
      const p = parseArgs(rest, new Set(["-P"]))
      if (typeof p === "string") return fail(p)
      const r = range(image, p.args)
      if (typeof r === "string") return fail(r)
      const pattern = p.flags.get("-P")
      return guarded(
        Effect.gen(function* () {
          const bytes = new Uint8Array(r.length)
          yield* image.read(r.offset, bytes)
          if (typeof pattern === "string") {
            const value = parseSize(pattern)! & 0xff
            if (bytes.some((b) => b !== value)) return `Pattern verification failed at offset ${r.offset}, ${r.length} bytes`
          }
          const done = `read ${r.length}/${r.length} bytes at offset ${r.offset}`
          return p.flags.has("-v") ? `${hexDump(r.offset, bytes)}\n${done}` : done
        })
      )
    }
    case "write": {
      const p = parseArgs(rest, new Set(["-P"]))
      if (typeof p === "string") return fail(p)
      const r = range(image, p.args)
      if (typeof r === "string") return fail(r)
      if (p.flags.has("-z") && p.flags.has("-P")) return fail("-z and -P cannot be specified at the same time")
      const pattern = p.flags.get("-P")
      const write = p.flags.has("-z")
        ? image.writeZeroes(r.offset, r.length)
        : image.write(r.offset, new Uint8Array(r.length).fill(typeof pattern === "string" ? parseSize(pattern)! & 0xff : 0xcd))
      return guarded(Effect.as(write, `wrote ${r.length}/${r.length} bytes at offset ${r.offset}`))
    }
    case "discard": {
      const r = range(image, rest)
      if (typeof r === "string") return fail(r)
      return guarded(Effect.as(image.discard(r.offset, r.length), `discard ${r.length}/${r.length} bytes at offset ${r.offset}`))
    }
    case "map":
      return guarded(
        Effect.gen(function* () {
          const lines: string[] = []
          for (let pos = 0; pos < image.virtualSize; ) {
            const s = yield* image.blockStatus(pos, image.virtualSize - pos)
            const allocated = s.present && s.depth === 0
            lines.push(`${s.length} (0x${s.length.toString(16)}) bytes ${allocated ? "    allocated" : "not allocated"} at offset ${pos} (0x${pos.toString(16)})`)
            pos += Math.max(1, s.length)
          }
          return lines.join("\n")
        })
      )
    default:
      return Effect.succeed(`command "${command}" not found`)
  }
}
