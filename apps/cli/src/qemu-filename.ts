/**
 * Image names as QEMU takes them (block.c bdrv_open): a plain path,
 * `file:PATH` (the file protocol named explicitly), `json:{…}` (an options
 * tree: driver, file / file.filename, backing, encrypt.key-secret …),
 * `blkdebug::PATH` (QEMU's debug filter without rules: its request-shaping
 * knobs such as file.align change no result here, so it is the file), or,
 * with --image-opts, a `key=value,…` option string. Options given apart
 * (qemu-io's `open -o`) merge in. The result is what this toolkit opens.
 */
import * as path from "node:path"
import type { Image, ImageFormat } from "@qcow2/image"
import { splitOptionList } from "./createopts.js"

/** Block options flattened to dotted keys ("file.filename"); null: JSON null ("backing": null). */
export type BlockOptions = Map<string, string | null>

/** What to open. */
export interface ImageSpec {
  readonly file: string
  readonly format?: ImageFormat
  /** The id of the secret holding the passphrase (encrypt.key-secret). */
  readonly keySecret?: string
  /** The id of the secret of the backing file (backing.encrypt.key-secret). */
  readonly backingKeySecret?: string
  /** `backing: null`: open without the backing file. */
  readonly noBacking: boolean
  /**
   * backing.file.filename / backing.driver: the backing file the options
   * name. The image's own backing file is opened; these must agree with it
   * (checkBackingOptions), as this toolkit cannot substitute another.
   */
  readonly backingFile?: string
  readonly backingFormat?: string
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

const flatten = (value: unknown, prefix: string, into: BlockOptions): string | undefined => {
  if (value === null) {
    into.set(prefix, null)
    return undefined
  }
  if (typeof value === "object" && !Array.isArray(value)) {
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

const isFormat = (driver: string): driver is ImageFormat => driver === "qcow2" || driver === "raw" || driver === "luks"

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
  if (file !== undefined && file.startsWith("blkdebug:")) {
    const rest = file.slice("blkdebug:".length)
    const colon = rest.indexOf(":")
    if (colon === -1) return { ok: false, message: "Invalid blkdebug filename: no image file given" }
    if (colon > 0) return { ok: false, message: "blkdebug rule files (error injection) are not supported" }
    file = rest.slice(colon + 1)
    for (const key of [...options.keys()]) if (BLKDEBUG_KNOBS.some((k) => key === `file.${k}`)) options.delete(key)
  }
  const take = (key: string): string | null | undefined => {
    const v = options.get(key)
    options.delete(key)
    return v
  }
  if (options.get("driver") === "blkdebug") {
    // blkdebug over the image (driver=blkdebug,image.driver=qcow2): its knobs only shape requests.
    options.delete("driver")
    for (const key of [...options.keys()]) {
      if (key === "config" || key.startsWith("inject-error") || key.startsWith("set-state")) {
        return { ok: false, message: "blkdebug rules (error injection) are not supported" }
      }
      const value = options.get(key)!
      options.delete(key)
      if (key.startsWith("image.")) options.set(key.slice("image.".length), value)
      else if (!BLKDEBUG_KNOBS.includes(key)) return { ok: false, message: `Block format 'blkdebug' does not support the option '${key}'` }
    }
  }
  const fileDriver = take("file.driver")
  if (typeof fileDriver === "string" && fileDriver !== "file") return { ok: false, message: `Unknown protocol '${fileDriver}'` }
  const fileOption = take("file.filename") ?? take("file") ?? take("filename")
  if (typeof fileOption === "string") file = fileOption
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
      ...(typeof backingKeySecret === "string" ? { backingKeySecret } : {}),
      noBacking: backing === null,
      ...(typeof backingFile === "string" ? { backingFile } : {}),
      ...(typeof backingFormat === "string" ? { backingFormat } : {})
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
