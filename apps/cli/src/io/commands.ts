/**
 * qemu-io commands (qemu-io-cmds.c) over an opened Image, with qemu-io's
 * output text: "read 65536/65536 bytes at offset 0", the statistics line,
 * hex dumps, pattern checks and its error wording.
 */
import * as fs from "node:fs"
import { Effect } from "effect"
import type { Scope } from "effect"
import type { StorageOpener } from "@qcow2/storage"
import type { Image } from "@qcow2/image"
import { eprint, print } from "../output.js"
import { cFixed } from "../text/cformat.js"
import { cvtstr, timestr } from "../text/sizes.js"
import { parseSize } from "../text/strtosz.js"
import { dumpHuman } from "../text/qjson.js"
import { qcow2SpecificFor } from "../commands/info.js"
import { breakline, getopt, type GetoptResult } from "./getopt.js"

/** Largest single request qemu accepts (BDRV_REQUEST_MAX_BYTES). */
export const REQUEST_MAX = 2147483136

export interface IoContext {
  readonly image: Image
}

interface CommandSpec {
  readonly name: string
  readonly alias?: string
  readonly argmin: number
  /** -1: unlimited. */
  readonly argmax: number
  readonly optstring: string
  readonly args: string
  readonly oneline: string
  readonly run: (ctx: IoContext, parsed: GetoptResult) => Effect.Effect<boolean, never, StorageOpener | Scope.Scope>
}

/** qemu-io's cvtnum: a size, or the printed parse error and undefined. */
const cvtnum = (text: string): number | undefined => {
  const r = parseSize(text)
  if (r.ok) {
    if (r.hexWithSuffix) eprint(`qcow2: warning: Using a multiplier suffix on hex numbers is deprecated: ${text}\n`)
    return r.value
  }
  print(
    r.reason === "range"
      ? `Parsing error: argument too large -- ${text}\n`
      : `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}\n`
  )
  return undefined
}

/** A -P argument: strtol base 0, 0..255. */
const parsePattern = (text: string): number | undefined => {
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

const usage = (spec: CommandSpec): void => {
  print(`${spec.name} ${spec.args} -- ${spec.oneline}\n`)
}

const isAlnum = (b: number): boolean => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)

/** qemu-io's dump_buffer: offset, 16 hex bytes, then alphanumerics (others as '.'). */
export const hexDump = (buf: Uint8Array, offset: number): string => {
  const lines: string[] = []
  for (let i = 0; i < buf.length; i += 16) {
    const end = Math.min(buf.length, i + 16)
    let hex = ""
    let text = ""
    for (let j = i; j < end; j++) {
      const b = buf[j]!
      hex += (b < 16 ? "0" : "") + b.toString(16) + " "
      text += isAlnum(b) ? String.fromCharCode(b) : "."
    }
    lines.push(`${(offset + i).toString(16).padStart(8, "0")}:  ${hex} ${text}\n`)
  }
  return lines.join("")
}

/** The statistics line after an I/O command (print_report). */
export const report = (op: string, seconds: number, offset: number, count: number, total: number, ops: number, csv: boolean): string => {
  const t = Math.max(seconds, 1e-9)
  if (csv) {
    return `${total},${ops},${timestr(seconds, true)},${cFixed(total / t, 3)},${cFixed(ops / t, 3)}\n`
  }
  return (
    `${op} ${total}/${count} bytes at offset ${offset}\n` +
    `${cvtstr(total)}, ${ops} ops; ${timestr(seconds, false)} (${cvtstr(total / t)}/sec and ${cFixed(ops / t, 4)} ops/sec)\n`
  )
}

const elapsed = (start: number): number => (performance.now() - start) / 1000

const flag = (p: GetoptResult, c: string): boolean => p.options.some(([o]) => o === c)
const value = (p: GetoptResult, c: string): string | undefined => {
  let v: string | undefined
  for (const [o, a] of p.options) if (o === c) v = a
  return v
}

/** Image requests past the end fail the way QEMU's block layer does. */
/** Whether every byte of `bytes` equals `value`: memcmp against a filled block (a byte loop costs ~2 ns/byte). */
const allBytesAre = (bytes: Uint8Array, value: number): boolean => {
  const block = new Uint8Array(Math.min(bytes.length, 1 << 16)).fill(value)
  for (let pos = 0; pos < bytes.length; pos += block.length) {
    const n = Math.min(block.length, bytes.length - pos)
    if (Buffer.compare(bytes.subarray(pos, pos + n), block.subarray(0, n)) !== 0) return false
  }
  return true
}

const checkRange = (image: Image, offset: number, count: number): boolean => offset + count <= image.virtualSize

const readCmd: CommandSpec = {
  name: "read",
  alias: "r",
  argmin: 2,
  argmax: -1,
  optstring: "bCl:pP:qs:v",
  args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
  oneline: "reads a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      if (p.operands.length !== 2) {
        usage(readCmd)
        return false
      }
      if (flag(p, "b")) {
        print("read failed: Operation not supported\n")
        return false
      }
      let pattern: number | undefined
      const P = value(p, "P")
      if (P !== undefined) {
        pattern = parsePattern(P)
        if (pattern === undefined) return false
      }
      let patternOffset = 0
      const s = value(p, "s")
      if (s !== undefined) {
        const v = cvtnum(s)
        if (v === undefined) return false
        patternOffset = v
      }
      let patternCount: number | undefined
      const l = value(p, "l")
      if (l !== undefined) {
        const v = cvtnum(l)
        if (v === undefined) return false
        patternCount = v
      }
      if (pattern === undefined && (s !== undefined || l !== undefined)) {
        usage(readCmd)
        return false
      }
      const offset = cvtnum(p.operands[0]!)
      if (offset === undefined) return false
      const count = cvtnum(p.operands[1]!)
      if (count === undefined) return false
      if (count > REQUEST_MAX) {
        print(`length cannot exceed ${REQUEST_MAX}, given ${p.operands[1]}\n`)
        return false
      }
      const pCount = patternCount ?? count - patternOffset
      if (pCount < 0 || pCount + patternOffset > count) {
        print("pattern verification range exceeds end of read data\n")
        return false
      }
      const buf = new Uint8Array(count)
      const start = performance.now()
      if (!checkRange(ctx.image, offset, count)) {
        print("read failed: Input/output error\n")
        return false
      }
      const failed = yield* ctx.image.read(offset, buf).pipe(
        Effect.as(undefined),
        Effect.catch((e) => Effect.succeed(strerror(e)))
      )
      const seconds = elapsed(start)
      if (failed !== undefined) {
        print(`read failed: ${failed}\n`)
        return false
      }
      let ok = true
      if (pattern !== undefined && !allBytesAre(buf.subarray(patternOffset, patternOffset + pCount), pattern)) {
        print(`Pattern verification failed at offset ${offset + patternOffset}, ${pCount} bytes\n`)
        ok = false
      }
      if (flag(p, "q")) return ok
      if (flag(p, "v")) print(hexDump(buf, offset))
      print(report("read", seconds, offset, count, count, 1, flag(p, "C")))
      return ok
    })
}

const writeCmd: CommandSpec = {
  name: "write",
  alias: "w",
  argmin: 2,
  argmax: -1,
  optstring: "bcCfnpP:qs:uz",
  args: "[-bcCfnquz] [-P pattern | -s source_file] off len",
  oneline: "writes a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const b = flag(p, "b")
      const c = flag(p, "c")
      const z = flag(p, "z")
      const P = value(p, "P")
      const sourceFile = value(p, "s")
      if (b && z) {
        print("-b and -z cannot be specified at the same time\n")
        return false
      }
      if (flag(p, "f") && (b || c)) {
        print("-f and -b or -c cannot be specified at the same time\n")
        return false
      }
      if (flag(p, "n") && !z) {
        print("-n requires -z to be specified\n")
        return false
      }
      if (flag(p, "u") && !z) {
        print("-u requires -z to be specified\n")
        return false
      }
      if ([z, P !== undefined, sourceFile !== undefined].filter(Boolean).length > 1) {
        print("Only one of -z, -P, and -s can be specified at the same time\n")
        return false
      }
      if (p.operands.length !== 2) {
        usage(writeCmd)
        return false
      }
      if (b) {
        print("write failed: Operation not supported\n")
        return false
      }
      let pattern = 0xcd
      if (P !== undefined) {
        const v = parsePattern(P)
        if (v === undefined) return false
        pattern = v
      }
      const offset = cvtnum(p.operands[0]!)
      if (offset === undefined) return false
      const count = cvtnum(p.operands[1]!)
      if (count === undefined) return false
      if (count > REQUEST_MAX && !(z && flag(p, "n"))) {
        print(`length cannot exceed ${REQUEST_MAX} without -n, given ${p.operands[1]}\n`)
        return false
      }
      if (ctx.image.readOnly) {
        eprint("qcow2: Block node is read-only\n")
        return false
      }
      let data: Uint8Array | undefined
      if (!z) {
        data = new Uint8Array(count)
        if (sourceFile !== undefined) {
          try {
            const fd = fs.openSync(sourceFile, "r")
            try {
              const n = fs.readSync(fd, data, 0, count, 0)
              if (n < count) {
                print(`Unexpected end of image\n`)
                return false
              }
            } finally {
              fs.closeSync(fd)
            }
          } catch (e) {
            print(`${sourceFile}: ${e instanceof Error ? e.message : String(e)}\n`)
            return false
          }
        } else {
          data.fill(pattern)
        }
      }
      if (c || b) {
        // qemu-io: compressed (and -b) requests must be sector aligned.
        if (offset % 512 !== 0) {
          print(`${offset} is not a sector-aligned value for 'offset'\n`)
          return false
        }
        if (count % 512 !== 0) {
          print(`${count} is not a sector-aligned value for 'count'\n`)
          return false
        }
      }
      const start = performance.now()
      if (!checkRange(ctx.image, offset, count)) {
        print("write failed: Input/output error\n")
        return false
      }
      const op = z
        ? ctx.image.writeZeroes(offset, count, { unmap: flag(p, "u") })
        : c
          ? ctx.image.writeCompressed(offset, data!)
          : ctx.image.write(offset, data!)
      const failed = yield* op.pipe(
        Effect.as(undefined),
        Effect.catch((e) => Effect.succeed(strerror(e)))
      )
      const seconds = elapsed(start)
      if (failed !== undefined) {
        print(`write failed: ${failed}\n`)
        return false
      }
      if (flag(p, "q")) return true
      print(report("wrote", seconds, offset, count, count, 1, flag(p, "C")))
      return true
    })
}

const discardCmd: CommandSpec = {
  name: "discard",
  alias: "d",
  argmin: 2,
  argmax: -1,
  optstring: "Cq",
  args: "[-Cq] off len",
  oneline: "discards a number of bytes at a specified offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      if (p.operands.length !== 2) {
        usage(discardCmd)
        return false
      }
      const offset = cvtnum(p.operands[0]!)
      if (offset === undefined) return false
      const count = cvtnum(p.operands[1]!)
      if (count === undefined) return false
      if (count > REQUEST_MAX) {
        print(`length cannot exceed ${REQUEST_MAX}, given ${p.operands[1]}\n`)
        return false
      }
      if (ctx.image.readOnly) {
        eprint("qcow2: Block node is read-only\n")
        return false
      }
      const start = performance.now()
      if (!checkRange(ctx.image, offset, count)) {
        print("discard failed: Input/output error\n")
        return false
      }
      const failed = yield* ctx.image.discard(offset, count).pipe(
        Effect.as(undefined),
        Effect.catch((e) => Effect.succeed(strerror(e)))
      )
      const seconds = elapsed(start)
      if (failed !== undefined) {
        print(`discard failed: ${failed}\n`)
        return false
      }
      if (!flag(p, "q")) print(report("discard", seconds, offset, count, count, 1, flag(p, "C")))
      return true
    })
}

const flushCmd: CommandSpec = {
  name: "flush",
  alias: "f",
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "flush all in-core file state to disk",
  run: (ctx) =>
    ctx.image.flush().pipe(
      Effect.as(true),
      Effect.catch((e) => Effect.sync(() => (eprint(`qcow2: ${e.message}\n`), false)))
    )
}

const truncateCmd: CommandSpec = {
  name: "truncate",
  alias: "t",
  argmin: 1,
  argmax: 3,
  optstring: "m:",
  args: "[-m prealloc_mode] off",
  oneline: "truncates the current file at the given offset",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const mode = value(p, "m")
      if (mode !== undefined && !["off", "metadata", "falloc", "full"].includes(mode)) {
        print(`Invalid preallocation mode '${mode}'\n`)
        return false
      }
      if (p.operands.length !== 1) {
        usage(truncateCmd)
        return false
      }
      const size = cvtnum(p.operands[0]!)
      if (size === undefined) return false
      if (mode !== undefined && mode !== "off") {
        eprint(`qcow2: Preallocation mode '${mode}' is not supported by truncate\n`)
        return false
      }
      if (ctx.image.readOnly) {
        eprint("qcow2: Block node is read-only\n")
        return false
      }
      return yield* ctx.image.truncate(size, { shrink: true }).pipe(
        Effect.as(true),
        Effect.catch((e) => Effect.sync(() => (eprint(`qcow2: ${e.message}\n`), false)))
      )
    })
}

const lengthCmd: CommandSpec = {
  name: "length",
  alias: "l",
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "gets the length of the current file",
  run: (ctx) => Effect.sync(() => (print(`${cvtstr(ctx.image.virtualSize)}\n`), true))
}

/** qcow2's vm_state_offset: the guest offset where VM state would start (past the last L1 entry's range). */
export const vmStateOffset = (image: Image): number => {
  const h = image.header?.header
  if (image.format !== "qcow2" || h === undefined) return 0
  const extendedL2 = (h.incompatibleFeatures & 16n) !== 0n
  const l2Entries = image.clusterSize / (extendedL2 ? 16 : 8)
  const perL1 = image.clusterSize * l2Entries
  return Math.ceil(h.size / perL1) * perL1
}

const infoCmd: CommandSpec = {
  name: "info",
  alias: "i",
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "prints information about the current file",
  run: (ctx) =>
    Effect.gen(function* () {
      const image = ctx.image
      const clusterSize = image.format === "qcow2" ? image.clusterSize : 0
      let text = `format name: ${image.format}\ncluster size: ${cvtstr(clusterSize)}\nvm state offset: ${cvtstr(vmStateOffset(image))}\n`
      if (image.format === "qcow2") {
        const specific = yield* qcow2SpecificFor(image)
        if (specific !== undefined) text += "Format specific information:\n" + dumpHuman(specific, 1)
      }
      print(text)
      return true
    })
}

/** Runs of equal top-layer allocation (bdrv_is_allocated) from `offset`, at most `length` bytes. */
const allocationRun = (image: Image, offset: number, length: number) =>
  image.blockStatus(offset, length).pipe(
    Effect.map((s) => ({ allocated: s.present && s.depth === 0, length: Math.max(1, Math.min(s.length, length)) }))
  )

const mapCmd: CommandSpec = {
  name: "map",
  argmin: 0,
  argmax: 0,
  optstring: "",
  args: "",
  oneline: "prints the allocated areas of a file",
  run: (ctx) =>
    Effect.gen(function* () {
      const size = ctx.image.virtualSize
      let offset = 0
      while (offset < size) {
        const run = yield* allocationRun(ctx.image, offset, size - offset)
        let length = run.length
        while (offset + length < size) {
          const next = yield* allocationRun(ctx.image, offset + length, size - offset - length)
          if (next.allocated !== run.allocated) break
          length += next.length
        }
        print(
          `${cvtstr(length)} (0x${length.toString(16)}) bytes ${run.allocated ? "    allocated" : "not allocated"} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`
        )
        offset += length
      }
      return true
    }).pipe(Effect.catch((e) => Effect.sync(() => (print(`Failed to get allocation status: ${e.message}\n`), false))))
}

const allocCmd: CommandSpec = {
  name: "alloc",
  alias: "a",
  argmin: 1,
  argmax: 2,
  optstring: "",
  args: "offset [count]",
  oneline: "checks if offset is allocated in the file",
  run: (ctx, p) =>
    Effect.gen(function* () {
      const offset = cvtnum(p.operands[0]!)
      if (offset === undefined) return false
      let count = 512
      if (p.operands.length === 2) {
        const c = cvtnum(p.operands[1]!)
        if (c === undefined) return false
        count = c
      }
      const end = Math.min(offset + count, ctx.image.virtualSize)
      let allocated = 0
      let pos = offset
      while (pos < end) {
        const run = yield* allocationRun(ctx.image, pos, end - pos)
        if (run.allocated) allocated += run.length
        pos += run.length
      }
      print(`${allocated}/${count} bytes allocated at offset ${cvtstr(offset)}\n`)
      return true
    }).pipe(Effect.catch((e) => Effect.sync(() => (print(`is_allocated failed: ${e.message}\n`), false))))
}

export const COMMANDS: ReadonlyArray<CommandSpec> = [readCmd, writeCmd, discardCmd, flushCmd, truncateCmd, lengthCmd, infoCmd, mapCmd, allocCmd]

const argCountMessage = (spec: CommandSpec, argc: number): string => {
  if (spec.argmax === -1) return `bad argument count ${argc} to ${spec.name}, expected at least ${spec.argmin} arguments`
  if (spec.argmin === spec.argmax) return `bad argument count ${argc} to ${spec.name}, expected ${spec.argmin} arguments`
  return `bad argument count ${argc} to ${spec.name}, expected between ${spec.argmin} and ${spec.argmax} arguments`
}

/** Runs one qemu-io command line; false when it failed (qemu-io then exits 1). */
export const runIoCommand = (ctx: IoContext, line: string): Effect.Effect<boolean, never, StorageOpener | Scope.Scope> =>
  Effect.suspend(() => {
    const words = breakline(line)
    if (words.length === 0) return Effect.succeed(true)
    const name = words[0]!
    const spec = COMMANDS.find((c) => c.name === name || c.alias === name)
    if (spec === undefined) {
      eprint(`command "${name}" not found\n`)
      return Effect.succeed(false)
    }
    const args = words.slice(1)
    if (args.length < spec.argmin || (spec.argmax !== -1 && args.length > spec.argmax)) {
      eprint(argCountMessage(spec, args.length) + "\n")
      return Effect.succeed(false)
    }
    const parsed = getopt(spec.name, args, spec.optstring)
    if (!parsed.ok) {
      eprint(parsed.message + "\n")
      usage(spec)
      return Effect.succeed(false)
    }
    return spec.run(ctx, parsed.result)
  })

/**
 * qemu-io prints strerror() of the failed request; map the driver's error
 * to the errno QEMU would return.
 */
export const strerror = (e: { readonly reason?: string; readonly errno?: string; readonly message: string }): string => {
  const texts: Record<string, string> = {
    EIO: "Input/output error",
    EINVAL: "Invalid argument",
    ENOTSUP: "Operation not supported",
    ENOSPC: "No space left on device",
    EDQUOT: "Disk quota exceeded",
    EFBIG: "File too large",
    EPERM: "Operation not permitted",
    EACCES: "Permission denied",
    ERANGE: "Numerical result out of range"
  }
  if (e.errno !== undefined && texts[e.errno] !== undefined) return texts[e.errno]!
  switch (e.reason) {
    case "InvalidArgument":
      return texts.EINVAL!
    case "Unsupported":
      return texts.ENOTSUP!
    case "NoSpace":
      return texts.ENOSPC!
    case "RefcountOverflow":
      return texts.ERANGE!
    case "ReadOnly":
      return texts.EACCES!
    default:
      return texts.EIO!
  }
}
