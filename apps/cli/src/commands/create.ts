import * as fs from "node:fs"
import { Effect } from "effect"
import { createImage, createLuksImage, firstBlockLength, openImage } from "@qcow2/image"
import type { ImageFormat } from "@qcow2/image"
import { formattingLine, parseCreateOptions, toCreateOptions, type CreateFormat, type OptionValues } from "../createopts.js"
import { lockDescriptor, type ImageEnv } from "../env.js"
import { fail, usage, type CliFailure } from "../errors.js"
import { pathCombine } from "../names.js"
import { creationRefusal } from "../qemu-filename.js"
import { asksForHelp, cannotCreate, createHelp, invalidOptionList } from "../optionhelp.js"
import { print, printNow } from "../output.js"
import type { Secrets } from "../secrets.js"
import { parseSize, parseSizeBig } from "../text/strtosz.js"
import { programName } from "../progname.js"

export interface CreateCommandOptions {
  readonly file: string
  readonly size?: string
  /** -f; without it, `defaultCreateFormat`. */
  readonly format?: string
  readonly options: ReadonlyArray<string>
  readonly backingFile?: string
  readonly backingFormat?: string
  readonly unsafe: boolean
  readonly quiet: boolean
  readonly secrets: Secrets
}

/** Two error_report lines in qemu-img, each with the program name. */
const INVALID_SIZE = `Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n${programName}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`

/** Parses a size argument the way qemu-img does, with its messages. */
export const parseImageSize = (text: string, what = "image size"): Effect.Effect<number, CliFailure> => {
  const r = parseSize(text)
  if (r.ok) return Effect.succeed(r.value)
  if (r.reason === "range") return Effect.fail(fail(`Invalid ${what} specified. Must be between 0 and 9223372036854775807.`))
  return Effect.fail(fail(what === "image size" ? INVALID_SIZE : INVALID_SIZE.replace("image size", what)))
}

const INT64_MAX = (1n << 63n) - 1n

/** The size argument of create: anything up to 2^63 - 1 is accepted here (the driver judges it after "Formatting"). */
const parseCreateSize = (text: string): Effect.Effect<bigint, CliFailure> => {
  const r = parseSizeBig(text)
  if (r.ok && r.value <= INT64_MAX) return Effect.succeed(r.value)
  if (r.ok || r.reason === "range") return Effect.fail(fail("Invalid image size specified. Must be between 0 and 9223372036854775807."))
  return Effect.fail(fail(INVALID_SIZE))
}

/**
 * What qemu-img says when the driver finds the size too large (EFBIG):
 * here every size past 2^53 bytes, which this toolkit cannot address.
 */
const tooLarge = (file: string, format: CreateFormat) =>
  fail(`${file}: The image size is too large for file format '${format}'${format === "qcow2" ? " (try using a larger cluster size)" : ""}`)

/** Creates a raw image file of `size` bytes (preallocation off, falloc or full). */
const createRaw = (file: string, size: number, preallocation: string): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    const failure = (e: unknown) => fail(`${file}: ${e instanceof Error ? e.message : String(e)}`)
    // Truncated only once QEMU's creation locks are held: a file another process uses is left alone.
    // Read-write, as qemu-img opens it: a read lock needs a descriptor open for reading.
    const fd = yield* Effect.try({ try: () => fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT), catch: failure })
    const refused = yield* lockDescriptor(fd, file, "create")
    if (refused !== undefined) {
      fs.closeSync(fd)
      return yield* Effect.fail(failure(refused))
    }
    yield* Effect.try({
      try: () => {
        try {
          fs.ftruncateSync(fd, 0)
          if (preallocation === "full" || preallocation === "falloc") {
            const chunk = Buffer.alloc(Math.min(size, 1 << 20))
            for (let pos = 0; pos < size; pos += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - pos), pos)
          }
          fs.ftruncateSync(fd, size)
          // As QEMU's file driver: growing the empty file without preallocation allocates its first block.
          if (preallocation === "off") fs.writeSync(fd, Buffer.alloc(firstBlockLength(size)), 0, firstBlockLength(size), 0)
        } finally {
          fs.closeSync(fd)
        }
      },
      catch: (e) => (e instanceof Error && "code" in e && e.code === "EFBIG" ? tooLarge(file, "raw") : failure(e))
    })
  })

/** A raw LUKS1 volume (qemu-img create -f luks), with the crypto driver's messages. */
const createLuks = (o: CreateCommandOptions, values: OptionValues): Effect.Effect<void, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    const bad = (message: string) => Effect.fail(fail(`${o.file}: ${message}`))
    const keyId = values.get("key-secret")
    if (keyId === undefined) return yield* bad("Parameter 'key-secret' is required for cipher")
    const passphrase = o.secrets.byId.get(keyId)
    if (passphrase === undefined) return yield* bad(`No secret with id '${keyId}'`)
    const preallocation = values.get("preallocation") ?? "off"
    if (preallocation !== "off" && preallocation !== "falloc" && preallocation !== "full") {
      return yield* bad(`Parameter 'preallocation' does not accept value '${preallocation}'`)
    }
    const text = (name: string) => values.get(name)
    const iter = text("iter-time")
    yield* createLuksImage(o.file, {
      size: Number(values.get("size")),
      passphrase,
      preallocation,
      ...(text("cipher-alg") !== undefined ? { cipherAlg: text("cipher-alg")! } : {}),
      ...(text("cipher-mode") !== undefined ? { cipherMode: text("cipher-mode")! } : {}),
      ...(text("ivgen-alg") !== undefined ? { ivgenAlg: text("ivgen-alg")! } : {}),
      ...(text("ivgen-hash-alg") !== undefined ? { ivgenHashAlg: text("ivgen-hash-alg")! } : {}),
      ...(text("hash-alg") !== undefined ? { hashAlg: text("hash-alg")! } : {}),
      ...(iter !== undefined ? { iterTimeMs: Number(iter) } : {})
    }).pipe(Effect.mapError((e) => fail(`${o.file}: ${e.message}`)))
  })

/**
 * The format `create` makes without -f: qemu-img's is raw (its create
 * has no default driver but the raw one), so run as `qemu-img` this CLI
 * creates raw too and `-o help` lists raw's options; run as `qcow2` it
 * keeps this toolkit's own default, qcow2.
 */
export const defaultCreateFormat: CreateFormat = programName === "qemu-img" ? "raw" : "qcow2"

/** `qcow2 create`: qemu-img create for the qcow2 and raw formats. */
export const runCreate = (o: CreateCommandOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    const badList = invalidOptionList(o.options)
    if (badList !== undefined) return yield* Effect.fail(fail(`Invalid option list: ${badList}`))
    const formatName = o.format ?? defaultCreateFormat
    const format: CreateFormat | undefined = formatName === "qcow2" || formatName === "raw" || formatName === "luks" ? formatName : undefined
    if (asksForHelp(o.options)) {
      if (format === undefined) return yield* Effect.fail(fail(cannotCreate(formatName)))
      print(createHelp(format, o.file !== ""))
      return 0
    }
    if (o.file === "") return yield* Effect.fail(usage("Expecting image file name"))
    if (format === undefined) {
      // qemu-img parses the size before bdrv_img_create looks the driver up.
      if (o.size !== undefined) yield* parseCreateSize(o.size)
      return yield* Effect.fail(fail(`${o.file}: ${cannotCreate(formatName)}`))
    }
    // qemu-img parses the size argument first, then the -o lists, then adds -b and -F.
    const sizeArgument = o.size !== undefined ? String(yield* parseCreateSize(o.size)) : undefined
    const refusal = creationRefusal(o.file)
    if (refusal !== undefined) return yield* Effect.fail(fail(`${o.file}: ${refusal}`))
    const lists = [...o.options]
    if (format !== "qcow2" && (o.backingFile !== undefined || o.backingFormat !== undefined)) {
      const own = parseCreateOptions(format, lists)
      if (!own.ok) return yield* Effect.fail(fail(`${o.file}: ${own.message}`))
      const what = o.backingFile !== undefined ? "Backing file" : "Backing file format"
      return yield* Effect.fail(fail(`${o.file}: ${what} not supported for file format '${format}'`))
    }
    if (o.backingFile !== undefined) lists.push(`backing_file=${o.backingFile.replace(/,/g, ",,")}`)
    if (o.backingFormat !== undefined) lists.push(`backing_fmt=${o.backingFormat.replace(/,/g, ",,")}`)
    const parsed = parseCreateOptions(format, lists)
    if (!parsed.ok) return yield* Effect.fail(fail(`${o.file}: ${parsed.message}`))
    const values = parsed.values
    if (sizeArgument !== undefined) {
      if (values.has("size")) return yield* Effect.fail(fail(`${o.file}: The image size must be specified only once`))
      values.set("size", sizeArgument)
    }

    const backing = values.get("backing_file")
    if (backing === o.file) return yield* Effect.fail(fail(`${o.file}: Error: Trying to create an image with the same filename as the backing file`))
    if (backing === "") return yield* Effect.fail(fail(`${o.file}: Expected backing file name, got empty string`))
    const backingFmt = values.get("backing_fmt")
    if (format === "qcow2" && backing !== undefined) {
      if (backingFmt !== undefined && backingFmt !== "qcow2" && backingFmt !== "raw") {
        return yield* Effect.fail(fail(`${o.file}: Unknown driver '${backingFmt}'\nCould not open backing image.`))
      }
      if (!o.unsafe || !values.has("size")) {
        // qemu-img opens the backing file to check it and to take its size.
        const name = pathCombine(o.file, backing)
        const probed = yield* Effect.scoped(
          openImage(name, {
            readOnly: true,
            openBacking: false,
            // As bdrv_img_create: no I/O, so an encrypted backing file needs no key.
            noIo: true,
            ...(backingFmt !== undefined ? { format: backingFmt as ImageFormat } : {})
          }).pipe(Effect.map((img) => ({ size: img.virtualSize, format: img.format })))
        ).pipe(Effect.mapError((e) => fail(`${o.file}: ${e.message}\nCould not open backing image.`)))
        if (backingFmt === undefined) {
          return yield* Effect.fail(fail(`${o.file}: Backing file specified without backing format\nDetected format of ${probed.format}.`))
        }
        if (!values.has("size")) values.set("size", String(probed.size))
      }
    }
    if (!values.has("size")) return yield* Effect.fail(fail(`${o.file}: Image creation needs a size parameter`))
    // bdrv_img_create flushes stdout after this line.
    if (!o.quiet) printNow(formattingLine(o.file, format, values) + "\n")
    if (BigInt(values.get("size")!) > BigInt(Number.MAX_SAFE_INTEGER)) return yield* Effect.fail(tooLarge(o.file, format))
    // qemu-img prints the size as given but creates the image rounded up to whole sectors.
    values.set("size", String(Math.ceil(Number(values.get("size")) / 512) * 512))

    if (format === "raw") {
      const prealloc = values.get("preallocation") ?? "off"
      if (!["off", "falloc", "full"].includes(prealloc)) {
        return yield* Effect.fail(fail(`${o.file}: Parameter 'preallocation' does not accept value '${prealloc}'`))
      }
      yield* createRaw(o.file.startsWith("file:") ? o.file.slice("file:".length) : o.file, Number(values.get("size")), prealloc)
      return 0
    }
    if (format === "luks") {
      yield* createLuks(o, values)
      return 0
    }
    const keyId = values.get("encrypt.key-secret")
    let passphrase = o.secrets.passphrase
    if (keyId !== undefined) {
      passphrase = o.secrets.byId.get(keyId)
      if (passphrase === undefined) return yield* Effect.fail(fail(`${o.file}: No secret with id '${keyId}'`))
    }
    const built = toCreateOptions(values, passphrase)
    if (!built.ok) return yield* Effect.fail(fail(`${o.file}: ${built.message}`))
    yield* Effect.scoped(createImage(o.file, built.options)).pipe(Effect.mapError((e) => fail(`${o.file}: ${e.message}`)))
    return 0
  })
