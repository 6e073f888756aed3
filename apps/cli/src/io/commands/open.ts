import { Effect } from "effect"
import { errorReport } from "../../progname.js"
import { parseOptionString, type BlockOptions } from "../../qemu-filename.js"
import { printUsage, type IoCommand } from "../command.js"
import { openHelp, reopenHelp } from "../help-texts.js"
import { isDiscardMode, parseAioMode, parseCacheMode, type AioMode, type CacheMode } from "../session.js"

/** Adds `-o` options: later ones win, as QEMU's option lists merge. */
const mergeOptions = (into: BlockOptions, text: string): void => {
  for (const [k, v] of parseOptionString(text)) into.set(k, v)
}

/** `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`: opens an image when none is open. */
export const openCommand: IoCommand = {
  name: "open",
  needsFile: false,
  alias: "o",
  argmin: 1,
  argmax: -1,
  optstring: "snCro:kt:d:i:U",
  args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
  oneline: "open the file specified by path",
  help: openHelp,
  run: (session, p) =>
    Effect.suspend(() => {
      let readOnly = false
      let snapshot = false
      let copyOnRead = false
      let forceShare = false
      let cache: CacheMode = "writethrough"
      let aio: AioMode = "threads"
      const options: BlockOptions = new Map()
      for (const [letter, value] of p.options) {
        switch (letter) {
          case "s":
            snapshot = true
            break
          case "n":
            cache = "none"
            break
          case "C":
            copyOnRead = true
            break
          case "U":
            forceShare = true
            break
          case "r":
            readOnly = true
            break
          case "k":
            aio = "native"
            break
          case "t": {
            const mode = parseCacheMode(value!)
            if (mode === undefined) {
              errorReport(`Invalid cache option: ${value}`)
              return Effect.succeed(false)
            }
            cache = mode
            break
          }
          case "d":
            if (!isDiscardMode(value!)) {
              errorReport(`Invalid discard option: ${value}`)
              return Effect.succeed(false)
            }
            break
          case "i": {
            const mode = parseAioMode(value!)
            if (mode === undefined) {
              errorReport(`Invalid aio option: ${value}`)
              return Effect.succeed(false)
            }
            aio = mode
            break
          }
          case "o":
            mergeOptions(options, value!)
            break
        }
      }
      const operands = [...p.operands]
      if (session.imageOpts && operands.length === 1) mergeOptions(options, operands.shift()!)
      if (operands.length > 1) {
        printUsage(openCommand)
        return Effect.succeed(false)
      }
      return session.open({ name: operands[0], options, format: undefined, readOnly, snapshot, copyOnRead, forceShare, cache, aio })
    })
}

/** `close`: closes the open image. */
export const closeCommand: IoCommand = {
  name: "close",
  needsFile: true,
  alias: "c",
  argmin: 0,
  argmax: 0,
  optstring: "",
  oneline: "close the current open file",
  run: (ctx) => ctx.session.close().pipe(Effect.as(true))
}

/** `reopen [(-r|-w)] [-c cache] [-o options]`: the open image with another mode or options. */
export const reopenCommand: IoCommand = {
  name: "reopen",
  needsFile: true,
  argmin: 0,
  argmax: -1,
  optstring: "c:o:rw",
  args: "[(-r|-w)] [-c cache] [-o options]",
  oneline: "reopens an image with new options",
  help: reopenHelp,
  run: (ctx, p) =>
    Effect.suspend(() => {
      let readOnly: boolean | undefined
      let cache: CacheMode | undefined
      const options: BlockOptions = new Map()
      for (const [letter, value] of p.options) {
        if (letter === "c") {
          cache = parseCacheMode(value!)
          if (cache === undefined) {
            errorReport(`Invalid cache option: ${value}`)
            return Effect.succeed(false)
          }
        } else if (letter === "o") {
          mergeOptions(options, value!)
        } else {
          if (readOnly !== undefined) {
            errorReport("Only one -r/-w option may be given")
            return Effect.succeed(false)
          }
          readOnly = letter === "r"
        }
      }
      if (p.operands.length !== 0) {
        printUsage(reopenCommand)
        return Effect.succeed(false)
      }
      if (readOnly !== undefined && options.has("read-only")) {
        errorReport("Cannot set both -r/-w and 'read-only'")
        return Effect.succeed(false)
      }
      if (cache !== undefined && (options.has("cache.direct") || options.has("cache.no-flush"))) {
        errorReport("Cannot set both -c and the cache options")
        return Effect.succeed(false)
      }
      return ctx.session.reopen({ options, ...(readOnly !== undefined ? { readOnly } : {}), ...(cache !== undefined ? { cache } : {}) })
    })
}
