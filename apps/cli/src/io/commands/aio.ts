/**
 * qemu-io's asynchronous requests: each is submitted and runs in flight
 * (aio-requests.ts) while the next commands run; its completion lines
 * (qemu-io's aio_*_done) come when qemu-io's main loop delivers them. As
 * in qemu-io, a submitted request never fails the command: its I/O error
 * or pattern mismatch is only printed.
 */
import { Effect } from "effect"
import { print } from "../../output.js"
import { hasOption, parsePatternArgument, parseSizeArgument } from "../args.js"
import { printUsage, type IoCommand } from "../command.js"
import { aioReadHelp, aioWriteHelp } from "../help-texts.js"
import { hexDump } from "../report.js"
import { measureRequest, printRequestReport } from "../request.js"
import { parseVectorRange, verifyPattern } from "../vectored.js"

/** `aio_read [-Ciqv] [-P pattern] off len [len..]`. */
export const aioReadCommand: IoCommand = {
  name: "aio_read",
  needsFile: true,
  argmin: 2,
  argmax: -1,
  optstring: "CP:iqv",
  args: "[-Ciqv] [-P pattern] off len [len..]",
  oneline: "asynchronously reads a number of bytes",
  help: aioReadHelp,
  run: (ctx, p) =>
    Effect.gen(function* () {
      let pattern: number | undefined
      for (const [letter, value] of p.options) {
        if (letter === "P") {
          pattern = parsePatternArgument(value!)
          if (pattern === undefined) return false
        } else if (letter === "i") {
          print("injecting invalid read request\n")
          return true
        }
      }
      if (p.operands.length < 2) {
        printUsage(aioReadCommand)
        return false
      }
      const range = parseVectorRange(p.operands)
      if (range === undefined) return false
      const buf = new Uint8Array(range.count)
      const request = Effect.map(
        measureRequest(ctx.image, range, () => ctx.image.read(range.offset, buf)),
        (outcome) => () => {
          if (!outcome.ok) return print(`readv failed: ${outcome.failure}\n`)
          if (pattern !== undefined) verifyPattern(buf, pattern, range.offset)
          if (hasOption(p, "q")) return
          if (hasOption(p, "v")) print(hexDump(buf, range.offset))
          printRequestReport(p, "read", range, outcome.seconds)
        }
      )
      yield* ctx.session.requests.submit(request)
      return true
    })
}

/** `aio_write [-Cfiquz] [-P pattern] off len [len..]`. */
export const aioWriteCommand: IoCommand = {
  name: "aio_write",
  needsFile: true,
  writes: true,
  argmin: 2,
  argmax: -1,
  optstring: "CfiqP:uz",
  args: "[-Cfiquz] [-P pattern] off len [len..]",
  oneline: "asynchronously writes a number of bytes",
  help: aioWriteHelp,
  run: (ctx, p) =>
    Effect.gen(function* () {
      let pattern = 0xcd
      for (const [letter, value] of p.options) {
        if (letter === "P") {
          const v = parsePatternArgument(value!)
          if (v === undefined) return false
          pattern = v
        } else if (letter === "i") {
          print("injecting invalid write request\n")
          return true
        }
      }
      if (p.operands.length < 2) {
        printUsage(aioWriteCommand)
        return false
      }
      const zeroes = hasOption(p, "z")
      if (hasOption(p, "u") && !zeroes) {
        print("-u requires -z to be specified\n")
        return false
      }
      if (zeroes && p.operands.length !== 2) {
        print("-z supports only a single length parameter\n")
        return false
      }
      let range
      if (zeroes) {
        const offset = parseSizeArgument(p.operands[0]!)
        if (offset === undefined) return false
        const count = parseSizeArgument(p.operands[1]!)
        if (count === undefined) return false
        range = { offset, count }
      } else {
        range = parseVectorRange(p.operands)
        if (range === undefined) return false
      }
      const r = range
      const data = zeroes ? undefined : new Uint8Array(r.count).fill(pattern)
      const request = Effect.map(
        measureRequest(ctx.image, r, () => (data === undefined ? ctx.image.writeZeroes(r.offset, r.count, { unmap: hasOption(p, "u") }) : ctx.image.write(r.offset, data))),
        (outcome) => () => {
          if (!outcome.ok) return print(`aio_write failed: ${outcome.failure}\n`)
          printRequestReport(p, "wrote", r, outcome.seconds)
        }
      )
      yield* ctx.session.requests.submit(request)
      return true
    })
}

/**
 * `aio_flush`: waits for every request in flight, delivering their
 * completions (qemu-io's blk_drain_all; it flushes nothing).
 */
export const aioFlushCommand: IoCommand = {
  name: "aio_flush",
  needsFile: true,
  argmin: 0,
  argmax: 0,
  optstring: "",
  oneline: "completes all outstanding aio requests",
  run: (ctx) =>
    Effect.map(ctx.session.requests.drain(), (drained) => {
      if (!drained) print("aio_flush: requests held at a blkdebug breakpoint cannot complete\n")
      return drained
    })
}
