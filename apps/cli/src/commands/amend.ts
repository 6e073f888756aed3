import { Effect } from "effect"
import type { LuksKeySlotAmendment } from "@qcow2/crypto"
import { amendImage, amendLuksImage, type AmendOptions, type ImageFormat } from "@qcow2/image"
import { splitOptionList } from "../createopts.js"
import { driverReport, openNamed, resolveNamed, type ImageEnv } from "../env.js"
import { fail, openFailure, usage, type CliFailure } from "../errors.js"
import { amendHelp, asksForHelp, cannotAmend, invalidOptionList, LUKS_AMEND_OPTIONS, LUKS_CREATE_OPTIONS, QCOW2_AMEND_OPTIONS } from "../optionhelp.js"
import { print, printNow } from "../output.js"
import type { Secrets } from "../secrets.js"
import { errorReport } from "../progname.js"
import { cFixedPadded } from "../text/cformat.js"
import { parseSize } from "../text/strtosz.js"

export interface AmendCommandOptions {
  /** "" when no file name was given. */
  readonly file: string
  /** -f as given (checked here, after `-o help`, as qemu-img amend does). */
  readonly format?: string
  readonly options: ReadonlyArray<string>
  readonly force: boolean
  readonly quiet: boolean
  readonly progress: boolean
  readonly secrets: Secrets
}

/** qcow2's creation options that amend refuses ("only supported for image creation"). */
const CREATE_ONLY = new Set([
  "cluster_size",
  "compression_type",
  "encryption",
  "encrypt.format",
  "encrypt.key-secret",
  "encrypt.cipher-alg",
  "encrypt.cipher-mode",
  "encrypt.ivgen-alg",
  "encrypt.ivgen-hash-alg",
  "encrypt.hash-alg",
  "extended_l2",
  "preallocation"
])

const BOOL_TRUE = new Set(["on", "yes", "true", "y"])
const BOOL_FALSE = new Set(["off", "no", "false", "n"])

type Parsed = { readonly ok: true; readonly options: AmendOptions } | { readonly ok: false; readonly message: string }

/** A QemuOpts number (qemu_strtou64 with base 0: decimal, 0x hex, 0 octal, a leading minus wraps), as QAPI then reads it. */
const qemuNumber = (text: string): number | undefined => {
  const m = /^\s*(-?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text)
  if (m === null) return undefined
  const digits = m[2]!
  const magnitude = /^0[xX]/.test(digits) ? Number.parseInt(digits.slice(2), 16) : digits.startsWith("0") ? Number.parseInt(digits, 8) || 0 : Number(digits)
  return m[1] === "-" ? -magnitude : magnitude
}

/**
 * The key-slot options (qcow2's encrypt.* without the prefix, or the luks
 * driver's own) as QEMU's QCryptoBlockAmendOptionsLUKS visitor reads them:
 * `state` is required and is active or inactive. Undefined when none is given.
 */
const keySlotAmendment = (
  values: ReadonlyMap<string, string>,
  prefix: string,
  force: boolean
): LuksKeySlotAmendment | { readonly invalid: string } | undefined => {
  const get = (name: string) => values.get(prefix + name)
  if (![...values.keys()].some((n) => LUKS_AMEND_OPTIONS.includes(n.slice(prefix.length)) && n.startsWith(prefix))) return undefined
  const state = get("state")
  if (state === undefined) return { invalid: "Parameter 'state' is missing" }
  if (state !== "active" && state !== "inactive") return { invalid: `Parameter 'state' does not accept value '${state}'` }
  const keyslot = get("keyslot")
  const iterTime = get("iter-time")
  return {
    state,
    force,
    ...(keyslot !== undefined ? { keyslot: qemuNumber(keyslot)! } : {}),
    ...(iterTime !== undefined ? { iterTimeMs: Math.max(0, qemuNumber(iterTime)!) } : {}),
    ...(get("old-secret") !== undefined ? { oldSecret: get("old-secret")! } : {}),
    ...(get("new-secret") !== undefined ? { newSecret: get("new-secret")! } : {})
  }
}

/** The -o lists as name → value (the last one wins), or qemu-img's "Invalid parameter" / "expects a number" refusal. */
const optionValues = (
  lists: ReadonlyArray<string>,
  known: ReadonlyArray<string>,
  createOnly: ReadonlySet<string>,
  numbers: ReadonlyArray<string>
): Map<string, string> | string => {
  const values = new Map<string, string>()
  for (const list of lists) {
    for (const [name, value] of splitOptionList(list)) {
      if (!known.includes(name)) {
        const hint = createOnly.has(name) ? "\nThis option is only supported for image creation" : ""
        return `Invalid parameter '${name}'${hint}`
      }
      if (numbers.includes(name) && qemuNumber(value) === undefined) return `Parameter '${name}' expects a number`
      values.set(name, value)
    }
  }
  return values
}

/** Parses the joined -o lists against the luks driver's amend options (key slots only). */
export const parseLuksAmendOptions = (lists: ReadonlyArray<string>, force: boolean): Parsed => {
  const values = optionValues(lists, LUKS_AMEND_OPTIONS, new Set(LUKS_CREATE_OPTIONS), ["keyslot", "iter-time"])
  if (typeof values === "string") return { ok: false, message: values }
  const encryption = keySlotAmendment(values, "", force)
  if (encryption !== undefined && "invalid" in encryption) return { ok: false, message: encryption.invalid }
  return { ok: true, options: encryption === undefined ? {} : { encryption } }
}

/** Parses the joined -o lists against qcow2's amend options, with qemu-img's messages. */
export const parseAmendOptions = (lists: ReadonlyArray<string>, force = false): Parsed => {
  const values = optionValues(lists, QCOW2_AMEND_OPTIONS, CREATE_ONLY, ["encrypt.keyslot", "encrypt.iter-time"])
  if (typeof values === "string") return { ok: false, message: values }
  const bool = (name: string): boolean | undefined | "bad" => {
    const v = values.get(name)
    if (v === undefined) return undefined
    return BOOL_TRUE.has(v) ? true : BOOL_FALSE.has(v) ? false : "bad"
  }
  const out: { -readonly [K in keyof AmendOptions]: AmendOptions[K] } = {}
  for (const name of ["lazy_refcounts", "data_file_raw"] as const) {
    const b = bool(name)
    if (b === "bad") return { ok: false, message: `Parameter '${name}' expects 'on' or 'off'` }
    if (b !== undefined) out[name === "lazy_refcounts" ? "lazyRefcounts" : "dataFileRaw"] = b
  }
  const size = values.get("size")
  if (size !== undefined) {
    const r = parseSize(size)
    if (!r.ok) {
      return {
        ok: false,
        message:
          "Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
      }
    }
    out.size = r.value
  }
  const bits = values.get("refcount_bits")
  if (bits !== undefined) {
    if (!/^(0[xX][0-9a-fA-F]+|-?[0-9]+)$/.test(bits)) return { ok: false, message: "Parameter 'refcount_bits' expects a number" }
    out.refcountBits = Number(bits)
  }
  const compat = values.get("compat")
  if (compat !== undefined) {
    if (compat === "0.10" || compat === "v2") out.compat = "0.10"
    else if (compat === "1.1" || compat === "v3") out.compat = "1.1"
    else return { ok: false, message: `Unknown compatibility level ${compat}` }
  }
  if (values.has("backing_file")) out.backingFile = values.get("backing_file")!
  if (values.has("backing_fmt")) out.backingFormat = values.get("backing_fmt")!
  if (values.has("data_file")) out.dataFile = values.get("data_file")!
  const encryption = keySlotAmendment(values, "encrypt.", force)
  if (encryption !== undefined) out.encryption = encryption
  return { ok: true, options: out }
}

/** qemu-img's progress line for amend: printed at 0 and 100 and whenever it moves by more than 1%. */
class AmendProgressLine {
  private last = 0
  constructor(private readonly enabled: boolean) {}

  print(percent: number): void {
    if (!this.enabled) return
    const current = Math.min(100, percent)
    if (current > this.last + 1 || current < this.last - 1 || current === 0 || current === 100) {
      this.last = current
      printNow(`    (${cFixedPadded(current, 2, 3, false)}/100%)\r`)
    }
  }

  end(): void {
    if (this.enabled) printNow("\n")
  }
}

/** `qcow2 amend`: qemu-img amend for qcow2 images and raw LUKS volumes (key slots). */
export const runAmend = (o: AmendCommandOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    const badList = invalidOptionList(o.options)
    if (badList !== undefined) return yield* Effect.fail(fail(`Invalid option list: ${badList}`))
    if (o.options.length === 0) return yield* Effect.fail(usage("Must specify options (-o)"))
    const help = asksForHelp(o.options)
    if (o.format !== undefined && help) {
      if (o.format !== "qcow2" && o.format !== "luks") return yield* Effect.fail(fail(cannotAmend(o.format)))
      print(amendHelp(o.format))
      return 0
    }
    if (o.file === "") return yield* Effect.fail(fail("Expecting one image file name"))
    // The null-co device amends nothing (its driver has no amend), as qemu-img answers.
    if (o.format === "null-co") return yield* Effect.fail(fail(cannotAmend(o.format)))
    const format: ImageFormat | undefined = o.format === "qcow2" || o.format === "raw" || o.format === "luks" ? o.format : undefined
    if (o.format !== undefined && format === undefined) return yield* Effect.fail(fail(`Could not open '${o.file}': Unknown driver '${o.format}'`))
    const base = {
      readOnly: false,
      ...(format !== undefined ? { format } : {}),
      ...(o.secrets.passphrase !== undefined ? { passphrase: o.secrets.passphrase } : {})
    }
    const opened = yield* Effect.scoped(
      openNamed(o.file, base).pipe(Effect.map(({ image, file }) => ({ format: image.format, file })))
    ).pipe(Effect.mapError(({ error, file }) => openFailure(file, error)))
    if (opened.format !== "qcow2" && opened.format !== "luks") return yield* Effect.fail(fail(`Format driver '${opened.format}' does not support option amendment`))
    if (help) {
      print(amendHelp(opened.format))
      return 0
    }
    const parsed = opened.format === "luks" ? parseLuksAmendOptions(o.options, o.force) : parseAmendOptions(o.options, o.force)
    if (!parsed.ok) return yield* Effect.fail(fail(parsed.message))
    // The passphrase the name opened with (--image-opts' key-secret, or the first secret).
    const resolved = resolveNamed(o.file, base)
    const openOptions = { format: opened.format, report: driverReport, ...("options" in resolved && resolved.options.passphrase !== undefined ? { passphrase: resolved.options.passphrase } : {}) }
    const options: AmendOptions = { ...parsed.options, secrets: (id) => o.secrets.byId.get(id) }
    const line = new AmendProgressLine(o.progress && !o.quiet)
    line.print(0)
    const amended =
      opened.format === "luks"
        ? amendLuksImage(opened.file, options, openOptions)
        : amendImage(opened.file, options, openOptions, (done, total) => line.print(total === 0 ? 0 : (100 * done) / total))
    const result = yield* amended.pipe(
      Effect.as(undefined),
      Effect.catch((e) => Effect.succeed(e))
    )
    line.print(100)
    line.end()
    if (result === undefined) return 0
    for (const message of result.reported ?? []) errorReport(message)
    return yield* Effect.fail(fail(result.message))
  })
