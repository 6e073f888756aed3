/**
 * The options of `qcow2 bench`, checked as qemu-img bench 7.2 checks them
 * (qemu-img.c img_bench): each option's own value, then the combinations,
 * then what the open would refuse; every message is qemu-img's.
 */
import { Effect } from "effect"
import type { bench, Values } from "../cli/spec.js"
import { imageOptions } from "../env.js"
import { type CliFailure, fail } from "../errors.js"
import { parseSize } from "../text/strtosz.js"
import type { BenchOptions } from "./bench.js"

const INT_MAX = 2147483647

/** qemu_strtoul with base 0 (decimal, 0x hex, 0 octal), the whole text, at most `max`. */
const parseUnsigned = (text: string, max: number): number | undefined => {
  const t = text.trimStart()
  const value = /^\+?0[xX][0-9a-fA-F]+$/.test(t)
    ? parseInt(t.replace(/^\+?0[xX]/, ""), 16)
    : /^\+?0[0-7]*$/.test(t)
      ? parseInt(t.replace(/^\+/, ""), 8)
      : /^\+?[1-9][0-9]*$/.test(t)
        ? Number(t)
        : undefined
  return value !== undefined && value <= max ? value : undefined
}

/** qemu-img's cvtnum_full: a size with suffixes, from 0 to `max`. */
const cvtnum = (text: string, what: string, max: number): Effect.Effect<number, CliFailure> => {
  const r = parseSize(text)
  if (r.ok && r.value <= max) return Effect.succeed(r.value)
  if (!r.ok && r.reason === "invalid") {
    return Effect.fail(
      fail(`Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for\nkilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`)
    )
  }
  return Effect.fail(fail(`Invalid ${what} specified. Must be between 0 and ${max === INT_MAX ? "2147483647" : "9223372036854775807"}.`))
}

const CACHE_MODES = ["none", "off", "directsync", "writeback", "unsafe", "writethrough"]

/** The checked options of a `bench` command line, or qemu-img's message for the first bad one. */
export const benchOptions = (c: Values<typeof bench>): Effect.Effect<BenchOptions, CliFailure> =>
  Effect.gen(function* () {
    const count = c.count === undefined ? 75000 : parseUnsigned(c.count, INT_MAX)
    if (count === undefined) return yield* Effect.fail(fail("Invalid request count specified"))
    // qemu-img 7.2 takes -d 0 and then waits forever for requests it never sends: refused here.
    const depth = c.depth === undefined ? 64 : parseUnsigned(c.depth, INT_MAX)
    if (depth === undefined || depth === 0) return yield* Effect.fail(fail("Invalid queue depth specified"))
    const format = c.format
    if (format !== undefined && format !== "qcow2" && format !== "raw" && format !== "null-co") return yield* Effect.fail(fail(`Unknown driver '${format}'`))
    const aio = c.aio ?? (c.native ? "native" : "threads")
    if (aio !== "threads" && aio !== "native" && aio !== "io_uring") return yield* Effect.fail(fail(`Invalid aio option: ${aio}`))
    // Offsets are JS numbers: exact up to 2^53, past any image this toolkit opens.
    const offset = c.offset === undefined ? 0 : yield* cvtnum(c.offset, "offset", Number.MAX_SAFE_INTEGER)
    const bufferSize = c.bufferSize === undefined ? 4096 : yield* cvtnum(c.bufferSize, "buffer size", INT_MAX)
    const step = c.stepSize === undefined ? 0 : yield* cvtnum(c.stepSize, "step_size", INT_MAX)
    const cache = c.cache ?? "writeback"
    if (!CACHE_MODES.includes(cache)) return yield* Effect.fail(fail("Invalid cache mode"))
    const pattern = c.pattern === undefined ? 0 : parseUnsigned(c.pattern, 0xff)
    if (pattern === undefined) return yield* Effect.fail(fail("Invalid pattern byte specified"))
    const flushInterval = c.flushInterval === undefined ? 0 : parseUnsigned(c.flushInterval, INT_MAX)
    if (flushInterval === undefined) return yield* Effect.fail(fail("Invalid flush interval specified"))
    if (!c.write && flushInterval > 0) return yield* Effect.fail(fail("--flush-interval is only available in write tests"))
    if (flushInterval > 0 && flushInterval < depth) return yield* Effect.fail(fail("Flush interval can't be smaller than depth"))
    if (c.imageOpts && format !== undefined) return yield* Effect.fail(fail("--image-opts and --format are mutually exclusive"))
    if (c.imageOpts) imageOptions.enabled = true
    // aio=native needs O_DIRECT (cache none or directsync), which QEMU checks when it opens the file.
    if (aio === "native" && cache !== "none" && cache !== "off" && cache !== "directsync") {
      return yield* Effect.fail(fail(`Could not open '${c.file}': aio=native was specified, but it requires cache.direct=on, which was not specified.`))
    }
    return {
      file: c.file,
      ...(format !== undefined ? { format } : {}),
      count,
      depth,
      bufferSize,
      // -S 0 (or none) steps by the buffer size.
      step: step === 0 ? bufferSize : step,
      offset,
      write: c.write,
      pattern,
      flushInterval,
      drainOnFlush: !c.noDrain,
      cache: cache === "unsafe" ? "unsafe" : cache === "writethrough" || cache === "directsync" ? "writethrough" : "writeback",
      forceShare: c.forceShare
    }
  })
