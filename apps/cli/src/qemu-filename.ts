/**
 * Image names as QEMU takes them (block.c bdrv_open): a plain path,
 * `file:PATH` (the file protocol named explicitly), `json:{…}` (an options
 * tree: driver, file / file.filename, backing, encrypt.key-secret …),
 * `blkdebug:CONFIG:PATH` or a `blkdebug` file node (QEMU's debug filter
 * between the format and its file: rules from a config file or
 * inject-error / set-state options; its request-shaping knobs such as
 * file.align change no result here), a blkdebug node over the image
 * (`driver=blkdebug,image.driver=qcow2`: rules and write-zeroes limits
 * that qemu-io applies), a copy-on-read or compress filter node, QEMU's
 * null-co device (null-node.ts), or, with
 * --image-opts, a `key=value,…` option string. Options given apart
 * (qemu-io's `open -o`) merge in. The result is what this toolkit opens.
 *
 * Over 450 lines: QEMU's option tree is resolved in one pass (each node's
 * keys taken out in turn, the leftovers refused), which splitting would
 * scatter across files that share the options map.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { NULL_CO_NAME, type Image, type ImageFormat } from "@qcow2/image"
import { blkdebugConfigFromOptions, mergeBlkdebugConfigs, parseBlkdebugConfigFile, type BlkdebugConfig } from "@qcow2/storage/blkdebug"
import { splitOptionList } from "./createopts.js"
import { isNullCoName, nullDeviceOf, type NullDevice } from "./null-node.js"
import { quorumNameOf, takeQuorumNode, type QuorumNode } from "./quorum-node.js"
import { nbdDisplayName, takeNbdNode } from "./nbd-node.js"
import { parseSize } from "./text/strtosz.js"

/** Block options flattened to dotted keys ("file.filename"); null: JSON null ("backing": null). */
export type BlockOptions = Map<string, string | null>

/** What to open. */
export interface ImageSpec {
  readonly file: string
  readonly format?: ImageFormat
  /** The id of the secret holding the passphrase (encrypt.key-secret). */
  readonly keySecret?: string
  /** `backing: null`: open without the backing file. */
  readonly noBacking: boolean
  /**
   * backing.file.filename / backing.driver: the backing file the options
   * name. The image's own backing file is opened; these must agree with it
   * (checkBackingOptions), as this toolkit cannot substitute another.
   */
  readonly backingFile?: string
  readonly backingFormat?: string
  /** backing.encrypt.key-secret: the id of the backing file's own passphrase. */
  readonly backingKeySecret?: string
  /** The image file sits under a blkdebug filter with these rules. */
  readonly blkdebug?: BlkdebugConfig
  /**
   * The image's "file" is itself an image of this format (a format node
   * over a format node: `file.driver=qcow2,file.file.filename=…`): the
   * image's bytes are that image's guest content.
   */
  readonly fileFormat?: ImageFormat
  /**
   * data-file: the external data file the options name, under a blkdebug
   * filter when its node is one (the raw node over it raises write_aio).
   */
  readonly dataFile?: { readonly file: string; readonly blkdebug?: BlkdebugConfig }
  /** The root node is this protocol driver (the file opened as a raw image); its file type is checked as QEMU checks it. */
  readonly protocol?: "file" | "host_device" | "host_cdrom"
  /** The root node is a blkdebug filter over the image with these request limits (its align, max-transfer, … options). */
  readonly blkdebugLimits?: BlkdebugLimits
  /** The root node is a blkdebug filter over the image with these rules: they see the guest requests and the events raised on that node (cor_write). */
  readonly imageBlkdebug?: BlkdebugConfig
  /** The root node is QEMU's copy-on-read filter: reads copy into the image (as qemu-io -C), and it cannot be opened read-only. */
  readonly copyOnReadFilter?: boolean
  /** The root node is QEMU's compress filter: every write is stored compressed (compress-filter.ts). */
  readonly compressFilter?: boolean
  /** The image's file is a quorum node (`file` is then its options as a json: name). */
  readonly quorum?: QuorumNode
  /** The quorum node is the root (driver=quorum): its guest bytes are the quorum's, `file` is the name QEMU gives it. */
  readonly quorumTop?: boolean
  /** The name is QEMU's null-co device (`file` is then `null-co://`): writes discarded, reads zeros. */
  readonly nullDevice?: NullDevice
}

export type ImageSpecResult = { readonly ok: true; readonly spec: ImageSpec } | { readonly ok: false; readonly message: string }

/**
 * Runtime options of the drivers that change nothing this toolkit does
 * differently (caches, discard passing, overlap checks, node names …):
 * accepted, as QEMU accepts them.
 */
const ACCEPTED_PREFIXES = ["overlap-check", "cache.", "file.aio", "file.locking", "file.cache", "file.x-check-cache-dropped", "file.pr-manager"]
const ACCEPTED = new Set([
  "node-name",
  "read-only",
  "auto-read-only",
  "force-share",
  "discard",
  "detect-zeroes",
  "lazy-refcounts",
  "pass-discard-request",
  "pass-discard-snapshot",
  "pass-discard-other",
  "cache-size",
  "l2-cache-size",
  "l2-cache-entry-size",
  "refcount-cache-size",
  "cache-clean-interval",
  "encrypt.format",
  "file.node-name",
  "backing.node-name",
  "file.discard",
  "file.detect-zeroes",
  "file.read-only"
])

/** blkdebug options that only shape requests (alignment, transfer limits): results are the same without them. */
const BLKDEBUG_KNOBS = ["align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard"]

/** A blkdebug node's request limits (QEMU's BlockLimits it sets from its options; 0 = none). */
export interface BlkdebugLimits {
  readonly align: number
  readonly maxTransfer: number
  readonly optWriteZero: number
  readonly maxWriteZero: number
}

const limitsOf = (knobs: ReadonlyMap<string, number>): BlkdebugLimits => ({
  align: knobs.get("align") ?? 0,
  maxTransfer: knobs.get("max-transfer") ?? 0,
  optWriteZero: knobs.get("opt-write-zero") ?? 0,
  maxWriteZero: knobs.get("max-write-zero") ?? 0
})

const flatten = (value: unknown, prefix: string, into: BlockOptions): string | undefined => {
  if (value === null) {
    into.set(prefix, null)
    return undefined
  }
  if (Array.isArray(value)) {
    // A list flattens to numbered keys (inject-error.0.event), as QEMU's qdict_flatten does.
    for (let i = 0; i < value.length; i++) {
      const error = flatten(value[i], `${prefix}.${i}`, into)
      if (error !== undefined) return error
    }
    return undefined
  }
  if (typeof value === "object") {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const error = flatten(v, prefix === "" ? k : `${prefix}.${k}`, into)
      if (error !== undefined) return error
    }
    return undefined
  }
  if (typeof value === "string") into.set(prefix, value)
  else if (typeof value === "number" || typeof value === "boolean") into.set(prefix, value === true ? "on" : value === false ? "off" : String(value))
  else return `Invalid parameter type for '${prefix}'`
  return undefined
}

/**
 * QEMU's JSON parser also takes single-quoted strings ('driver': 'qcow2',
 * \' inside them); this rewrites them as standard JSON strings.
 */
const withDoubleQuotes = (text: string): string => {
  let out = ""
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (c === '"') {
      const start = i
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === "\\") i++
      out += text.slice(start, i + 1)
    } else if (c === "'") {
      let value = ""
      for (i++; i < text.length && text[i] !== "'"; i++) {
        if (text[i] === "\\" && text[i + 1] === "'") value += text[++i]
        else if (text[i] === '"') value += '\\"'
        else value += text[i]
      }
      out += `"${value}"`
    } else {
      out += c
    }
  }
  return out
}

/** The options of a `json:{…}` name; a message when it is not a JSON object. */
export const parseJsonName = (name: string): { readonly ok: true; readonly options: BlockOptions } | { readonly ok: false; readonly message: string } => {
  let parsed: unknown
  try {
    parsed = JSON.parse(withDoubleQuotes(name.slice("json:".length)))
  } catch {
    return { ok: false, message: "Could not parse the JSON options: JSON parse error" }
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return { ok: false, message: "Could not parse the JSON options: Invalid JSON object given" }
  }
  const options: BlockOptions = new Map()
  const error = flatten(parsed, "", options)
  return error === undefined ? { ok: true, options } : { ok: false, message: error }
}

/** The options of an --image-opts string ("driver=qcow2,file.filename=x.qcow2"). */
export const parseOptionString = (text: string): BlockOptions => new Map(splitOptionList(text))

/**
 * The data-file node of the options (`data-file.driver=raw` over a file or a
 * blkdebug node, or `data-file.driver=file`); its keys are taken out.
 */
const takeDataFileNode = (
  options: BlockOptions
): { readonly ok: true; readonly node: { readonly file: string; readonly blkdebug?: BlkdebugConfig } } | { readonly ok: false; readonly message: string } | undefined => {
  const driver = options.get("data-file.driver")
  if (driver === undefined) return undefined
  options.delete("data-file.driver")
  const under = driver === "raw" ? "data-file.file." : "data-file."
  if (driver !== "raw" && driver !== "file") return { ok: false, message: `Unknown driver '${driver}'` }
  if (options.get(`${under}driver`) === "blkdebug") {
    const node = takeBlkdebugNode(options, under)
    if (!node.ok) return node
    if (node.image === undefined) return { ok: false, message: 'A block device must be specified for "file"' }
    return { ok: true, node: { file: node.image, blkdebug: node.config } }
  }
  const file = options.get(`${under}filename`) ?? (driver === "raw" ? options.get("data-file.file") : undefined)
  for (const key of [...options.keys()]) if (key.startsWith("data-file.")) options.delete(key)
  if (typeof file !== "string") return { ok: false, message: 'A block device must be specified for "file"' }
  return { ok: true, node: { file } }
}

const isFormat = (driver: string): driver is ImageFormat => driver === "qcow2" || driver === "raw" || driver === "luks"

type BlkdebugResult = { readonly ok: true; readonly config: BlkdebugConfig } | { readonly ok: false; readonly message: string }

/** strerror() of the errors reading a small file can meet. */
const FILE_ERRORS: Readonly<Record<string, string>> = { ENOENT: "No such file or directory", EACCES: "Permission denied", EISDIR: "Is a directory" }

/** The rules of a blkdebug config file (QEMU's read_config). */
const readBlkdebugConfig = (file: string): BlkdebugResult => {
  let text: string
  try {
    text = fs.readFileSync(file, "utf8")
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? ""
    return { ok: false, message: `Could not read blkdebug config file: ${FILE_ERRORS[code] ?? (e as Error).message}` }
  }
  return parseBlkdebugConfigFile(text)
}

/** `blkdebug:CONFIG:PATH` (CONFIG may be empty): the image path and the rules (blkdebug_parse_filename). */
const parseBlkdebugName = (name: string): { readonly ok: true; readonly file: string; readonly config: BlkdebugConfig } | { readonly ok: false; readonly message: string } => {
  const rest = name.slice("blkdebug:".length)
  const colon = rest.indexOf(":")
  if (colon === -1) return { ok: false, message: "blkdebug requires both config file and image path" }
  const config = colon > 0 ? readBlkdebugConfig(rest.slice(0, colon)) : { ok: true as const, config: { rules: [] } }
  return config.ok ? { ok: true, file: rest.slice(colon + 1), config: config.config } : config
}

/**
 * The blkdebug node whose options start with `prefix` ("file."): its rules
 * (config file, then inject-error / set-state options) and its image file
 * (`image` / `image.filename` / `x-image`). Its keys are taken out of
 * `options`; a key QEMU's blkdebug does not know is refused as QEMU does.
 */
const takeBlkdebugNode = (options: BlockOptions, prefix: string): { readonly ok: true; readonly config: BlkdebugConfig; readonly image: string | undefined } | { readonly ok: false; readonly message: string } => {
  const own = new Map<string, string>()
  for (const [key, value] of [...options]) {
    if (!key.startsWith(prefix)) continue
    options.delete(key)
    if (typeof value === "string") own.set(key.slice(prefix.length), value)
  }
  const configFile = own.get("config")
  const fromFile = configFile !== undefined ? readBlkdebugConfig(configFile) : { ok: true as const, config: { rules: [] } }
  if (!fromFile.ok) return fromFile
  const ruleOptions = new Map([...own].filter(([key]) => key.startsWith("inject-error.") || key.startsWith("set-state.")))
  const fromOptions = blkdebugConfigFromOptions(ruleOptions)
  if (!fromOptions.ok) return fromOptions
  const imageDriver = own.get("image.driver")
  if (imageDriver !== undefined && imageDriver !== "file") return { ok: false, message: `Unknown protocol '${imageDriver}'` }
  for (const key of own.keys()) {
    if (key === "config" || ruleOptions.has(key) || key.startsWith("image") || key === "x-image" || BLKDEBUG_KNOBS.includes(key)) continue
    if (key === "driver" || key === "node-name" || key.startsWith("take-child-perms") || key.startsWith("unshare-child-perms")) continue
    return { ok: false, message: `Block protocol 'blkdebug' doesn't support the option '${key}'` }
  }
  return { ok: true, config: mergeBlkdebugConfigs(fromFile.config, fromOptions.config), image: own.get("image.filename") ?? own.get("image") ?? own.get("x-image") }
}

/**
 * What `name` (undefined: no file name, only options) opens, with the
 * options given apart and the format of -f. QEMU's messages for what is
 * missing or unknown.
 */
export const resolveImageSpec = (name: string | undefined, given: BlockOptions, formatFlag: string | undefined): ImageSpecResult => {
  const options: BlockOptions = new Map(given)
  let file: string | undefined = name
  if (name !== undefined && name.startsWith("json:")) {
    const parsed = parseJsonName(name)
    if (!parsed.ok) return parsed
    for (const [k, v] of parsed.options) if (!options.has(k)) options.set(k, v)
    file = undefined
  } else if (name !== undefined && name.startsWith("file:")) {
    file = name.slice("file:".length)
  }
  const filter = options.get("driver")
  if (formatFlag === undefined && (filter === "copy-on-read" || filter === "compress")) {
    // QEMU's copy-on-read filter over the image (driver=copy-on-read,file.driver=qcow2): the image, read with -C;
    // its compress filter: the image, every write compressed.
    const lifted: BlockOptions = new Map()
    for (const [key, value] of options) {
      if (key.startsWith("file.")) lifted.set(key.slice("file.".length), value)
      else if (key !== "driver" && key !== "node-name") return { ok: false, message: `Block format '${filter}' does not support the option '${key}'` }
    }
    const inner = resolveImageSpec(file, lifted, undefined)
    if (!inner.ok) return inner
    return { ok: true, spec: { ...inner.spec, ...(filter === "compress" ? { compressFilter: true } : { copyOnReadFilter: true }) } }
  }
  const rootDriver = formatFlag ?? options.get("driver")
  const nullFormat = rootDriver === "null-co" ? "null-co" : file !== undefined && isNullCoName(file) && (rootDriver === undefined || rootDriver === "raw") ? "raw" : undefined
  if (nullFormat !== undefined) {
    const device = nullDeviceOf(options, file, nullFormat)
    return device.ok ? { ok: true, spec: { file: NULL_CO_NAME, noBacking: false, nullDevice: device.device } } : device
  }
  if (rootDriver === "quorum" && formatFlag === undefined) {
    const display = quorumNameOf(options)
    const node = takeQuorumNode(options, "")
    if (!node.ok) return node
    return { ok: true, spec: { file: display, format: "raw", noBacking: false, quorum: node.value, quorumTop: true } }
  }
  if (rootDriver === "file" || rootDriver === "host_device" || rootDriver === "host_cdrom") {
    // A protocol driver at the root: its file's bytes are the image (raw).
    const filename = options.get("filename") ?? file
    for (const key of ["driver", "filename", "locking", "aio", "node-name", "read-only", "auto-read-only", "discard", "x-check-cache-dropped"]) options.delete(key)
    for (const key of options.keys()) return { ok: false, message: `Block protocol '${rootDriver}' doesn't support the option '${key}'` }
    if (typeof filename !== "string") return { ok: false, message: 'A block device must be specified for "filename"' }
    return { ok: true, spec: { file: filename, format: "raw", noBacking: false, protocol: rootDriver } }
  }
  if (rootDriver === "nbd") {
    // The nbd protocol driver at the root: the export's bytes are the image (raw).
    const node = takeNbdNode(options, "")
    if (!node.ok) return node
    for (const key of options.keys()) if (!ACCEPTED.has(key) && !ACCEPTED_PREFIXES.some((p) => key.startsWith(p))) return { ok: false, message: `Block protocol 'nbd' doesn't support the option '${key}'` }
    return { ok: true, spec: { file: node.file, format: "raw", noBacking: false } }
  }
  const take = (key: string): string | null | undefined => {
    const v = options.get(key)
    options.delete(key)
    return v
  }
  const dataFile = takeDataFileNode(options)
  if (dataFile !== undefined && !dataFile.ok) return dataFile
  const knobs = new Map<string, number>()
  let imageBlkdebug: BlkdebugConfig | undefined
  if (options.get("driver") === "blkdebug") {
    // blkdebug over the image (driver=blkdebug,image.driver=qcow2): its knobs only shape requests.
    options.delete("driver")
    const ruleOptions = new Map<string, string>()
    let configFile: string | undefined
    for (const key of [...options.keys()]) {
      const value = options.get(key)!
      if (key === "config" || key.startsWith("inject-error.") || key.startsWith("set-state.")) {
        options.delete(key)
        if (typeof value !== "string") return { ok: false, message: `Invalid parameter '${key}'` }
        if (key === "config") configFile = value
        else ruleOptions.set(key, value)
        continue
      }
      options.delete(key)
      if (key.startsWith("image.")) options.set(key.slice("image.".length), value)
      else if (!BLKDEBUG_KNOBS.includes(key)) return { ok: false, message: `Block format 'blkdebug' does not support the option '${key}'` }
      else {
        const size = typeof value === "string" ? parseSize(value) : undefined
        if (size === undefined || !size.ok) return { ok: false, message: `Parameter '${key}' expects a non-negative number below 2^64` }
        knobs.set(key, size.value)
      }
    }
    if (configFile !== undefined || ruleOptions.size > 0) {
      const fromFile = configFile !== undefined ? readBlkdebugConfig(configFile) : { ok: true as const, config: { rules: [] } }
      if (!fromFile.ok) return fromFile
      const fromOptions = blkdebugConfigFromOptions(ruleOptions)
      if (!fromOptions.ok) return fromOptions
      imageBlkdebug = mergeBlkdebugConfigs(fromFile.config, fromOptions.config)
    }
  }
  let blkdebug: BlkdebugConfig | undefined
  let fileFormat: ImageFormat | undefined
  let quorum: QuorumNode | undefined
  const fileDriver = take("file.driver")
  if (fileDriver === "blkdebug") {
    const node = takeBlkdebugNode(options, "file.")
    if (!node.ok) return node
    blkdebug = node.config
    // Without image options the name opened is blkdebug's filename: the image itself, or blkdebug:CONFIG:PATH (blkdebug_parse_filename).
    file = node.image ?? file
  } else if (fileDriver === "quorum") {
    // A quorum of files or images as the image's file; its name is its options as JSON (it has no file name of its own).
    const own = new Map([...options].filter(([key]) => key.startsWith("file.")).map(([key, value]) => [key.slice("file.".length), value] as const))
    const node = takeQuorumNode(options, "file.")
    if (!node.ok) return node
    quorum = node.value
    file = jsonNameOf([...own].map(([key, value]) => `${key}=${value ?? ""}`).join(","))
  } else if (typeof fileDriver === "string" && isFormat(fileDriver)) {
    // A format node as the file: its own file is named one level down.
    fileFormat = fileDriver
    const innerDriver = take("file.file.driver")
    if (typeof innerDriver === "string" && innerDriver !== "file") return { ok: false, message: `Unknown protocol '${innerDriver}'` }
    const inner = take("file.file.filename") ?? take("file.file")
    if (typeof inner === "string") file = inner
  } else if (fileDriver === "nbd") {
    const node = takeNbdNode(options, "file.")
    if (!node.ok) return node
    file = node.file
  } else {
    if (typeof fileDriver === "string" && fileDriver !== "file") return { ok: false, message: `Unknown protocol '${fileDriver}'` }
    // A top-level "filename" names a protocol node's file, never a format node's (QEMU: 'A block device must be specified for "file"').
    const fileOption = take("file.filename") ?? take("file")
    if (typeof fileOption === "string") file = fileOption
  }
  if (file !== undefined && file.startsWith("blkdebug:")) {
    const named = parseBlkdebugName(file)
    if (!named.ok) return named
    file = named.file
    blkdebug = blkdebug === undefined ? named.config : mergeBlkdebugConfigs(named.config, blkdebug)
    for (const key of [...options.keys()]) if (BLKDEBUG_KNOBS.some((k) => key === `file.${k}`)) options.delete(key)
  }
  const driverOption = take("driver")
  const driver = formatFlag ?? (typeof driverOption === "string" ? driverOption : undefined)
  if (driver !== undefined && !isFormat(driver)) return { ok: false, message: `Unknown driver '${driver}'` }
  if (file === undefined) {
    return { ok: false, message: driver !== undefined ? 'A block device must be specified for "file"' : "Must specify either driver or file" }
  }
  // qcow2 names its secret encrypt.key-secret; the luks driver plain key-secret.
  const keySecret = take(driver === "luks" ? "key-secret" : "encrypt.key-secret")
  const backing = take("backing")
  const backingFile = take("backing.file.filename")
  const backingFormat = take("backing.driver")
  const backingKeySecret = take("backing.encrypt.key-secret")
  if (typeof backing === "string") return { ok: false, message: "Could not open backing file: a backing node reference is not supported" }
  for (const key of options.keys()) {
    if (!ACCEPTED.has(key) && !ACCEPTED_PREFIXES.some((p) => key.startsWith(p))) {
      return { ok: false, message: `Block format '${driver ?? "qcow2"}' does not support the option '${key}'` }
    }
  }
  return {
    ok: true,
    spec: {
      file,
      ...(driver !== undefined ? { format: driver } : {}),
      ...(typeof keySecret === "string" ? { keySecret } : {}),
      noBacking: backing === null,
      ...(typeof backingFile === "string" ? { backingFile } : {}),
      ...(typeof backingFormat === "string" ? { backingFormat } : {}),
      ...(typeof backingKeySecret === "string" ? { backingKeySecret } : {}),
      ...(blkdebug !== undefined ? { blkdebug } : {}),
      ...(fileFormat !== undefined ? { fileFormat } : {}),
      ...(dataFile !== undefined ? { dataFile: dataFile.node } : {}),
      ...(knobs.size > 0 ? { blkdebugLimits: limitsOf(knobs) } : {}),
      ...(imageBlkdebug !== undefined ? { imageBlkdebug } : {}),
      ...(quorum !== undefined ? { quorum } : {})
    }
  }
}

/** After opening: a message when the backing options name another backing file or format than the image has. */
export const checkBackingOptions = (spec: ImageSpec, image: Image): string | undefined => {
  const backing = image.backing
  if (spec.backingFile !== undefined && (image.backingFileResolved === undefined || path.resolve(spec.backingFile) !== path.resolve(image.backingFileResolved))) {
    return `Overriding the backing file ('${spec.backingFile}') is not supported`
  }
  if (spec.backingFormat !== undefined && backing !== undefined && backing.format !== spec.backingFormat) {
    return `Overriding the backing format ('${spec.backingFormat}') is not supported`
  }
  return undefined
}

/**
 * qcow2's cache options checked as QEMU's read_cache_sizes checks them once
 * the cluster size is known: a message when they contradict each other
 * (the sizes themselves change nothing this toolkit does).
 */
export const checkCacheOptions = (options: BlockOptions, clusterSize: number): string | undefined => {
  const sizeOf = (key: string): number | "max" | undefined | string => {
    const text = options.get(key)
    if (typeof text !== "string") return undefined
    if (key === "l2-cache-size" && text === "max") return "max"
    const size = parseSize(text)
    return size.ok ? size.value : `Parameter '${key}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`
  }
  const combined = sizeOf("cache-size")
  const l2 = sizeOf("l2-cache-size")
  const refcount = sizeOf("refcount-cache-size")
  const entry = sizeOf("l2-cache-entry-size")
  for (const value of [combined, l2, refcount, entry]) if (typeof value === "string" && value !== "max") return value
  if (typeof combined === "number") {
    if (l2 !== undefined && refcount !== undefined) return "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
    if (typeof l2 === "number" && l2 > combined) return "l2-cache-size may not exceed cache-size"
    if (typeof refcount === "number" && refcount > combined) return "refcount-cache-size may not exceed cache-size"
  }
  if (typeof entry === "number" && (entry < 512 || entry > clusterSize || (entry & (entry - 1)) !== 0)) {
    return `L2 cache entry size must be a power of two between 512 and the cluster size (${clusterSize})`
  }
  return undefined
}

/** Keys an option tree may have and still only name a file (QEMU then shows the file's own name). */
const PLAIN_KEYS = new Set(["driver", "file.driver", "file.filename", "file", "filename"])

/**
 * The file a name stands for when it says nothing else (a `json:` or
 * --image-opts name with only the driver and the file name, or `file:PATH`):
 * QEMU's bdrv_refresh_filename shows such an image by its file's name.
 * Undefined for a plain path or a name with other options.
 */
export const plainFileOf = (name: string, imageOpts: boolean): string | undefined => {
  if (!imageOpts && name.startsWith("file:")) {
    // A name whose first colon comes before any slash would read as a protocol prefix: QEMU shows it as ./NAME.
    const file = name.slice("file:".length)
    const colon = file.indexOf(":")
    return colon >= 0 && !file.slice(0, colon).includes("/") ? `./${file}` : file
  }
  const parsed = imageOpts ? { ok: true as const, options: parseOptionString(name) } : name.startsWith("json:") ? parseJsonName(name) : undefined
  // An NBD export shows as its canonical URI, as QEMU's nbd driver names it.
  const nbd = nbdDisplayName(name, parsed?.ok === true ? parsed.options : undefined)
  if (nbd !== undefined) return nbd
  if (parsed === undefined || !parsed.ok) return undefined
  for (const [key, value] of parsed.options) if (!PLAIN_KEYS.has(key) || (key === "file.driver" && value !== "file")) return undefined
  const file = parsed.options.get("file.filename") ?? parsed.options.get("file") ?? parsed.options.get("filename")
  return typeof file === "string" && !file.startsWith("blkdebug:") ? file : undefined
}

/**
 * An --image-opts string as the `json:{…}` name QEMU shows for an image
 * opened with options (its options as one JSON object, dotted keys nested).
 */
export const jsonNameOf = (optionString: string): string => {
  interface Tree {
    [key: string]: string | null | Tree
  }
  const tree: Tree = {}
  for (const [key, value] of parseOptionString(optionString)) {
    const parts = key.split(".")
    let node = tree
    for (const part of parts.slice(0, -1)) {
      const next = node[part]
      node = typeof next === "object" && next !== null ? next : (node[part] = {})
    }
    node[parts[parts.length - 1]!] = value
  }
  return `json:${JSON.stringify(tree)}`
}

/**
 * QEMU's refusal to create an image under `name` (bdrv_find_protocol):
 * a `json:{…}` name is no protocol of its own, whatever driver it names.
 */
export const creationRefusal = (name: string): string | undefined => (name.startsWith("json:") ? "Unknown protocol 'json'" : undefined)

/**
 * QEMU's refusal of a file its protocol driver cannot open (file-posix):
 * a read-write open of a directory fails in open(2) ("Is a directory");
 * otherwise 'file' wants a regular file and 'host_device' / 'host_cdrom'
 * a character or block device. Undefined when the type fits (or the file
 * does not exist: opening reports that).
 */
export const protocolRefusal = (protocol: NonNullable<ImageSpec["protocol"]>, file: string, readOnly: boolean): string | undefined => {
  let stats: fs.Stats
  try {
    stats = fs.statSync(file)
  } catch {
    return undefined
  }
  if (stats.isDirectory() && !readOnly) return `Could not open '${file}': Is a directory`
  if (protocol === "file") return stats.isFile() ? undefined : `'file' driver requires '${file}' to be a regular file`
  return stats.isCharacterDevice() || stats.isBlockDevice() ? undefined : `'${protocol}' driver requires '${file}' to be either a character or block device`
}
