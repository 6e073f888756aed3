import { Effect } from "effect"
import { amendImage, type AmendOptions, type ImageFormat } from "@qcow2/image"
import { splitOptionList } from "../createopts.js"
import { openNamed, type ImageEnv } from "../env.js"
import { fail, openFailure, usage, type CliFailure } from "../errors.js"
import { amendHelp, asksForHelp, invalidOptionList, QCOW2_AMEND_OPTIONS } from "../optionhelp.js"
import { print, printNow } from "../output.js"
import type { Secrets } from "../secrets.js"
import { cFixedPadded } from "../text/cformat.js"
import { parseSize } from "../text/strtosz.js"

export interface AmendCommandOptions {
  /** "" when no file name was given. */
  readonly file: string
  readonly format?: ImageFormat
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

/** Parses the joined -o lists against qcow2's amend options, with qemu-img's messages. */
export const parseAmendOptions = (lists: ReadonlyArray<string>): { readonly ok: true; readonly options: AmendOptions } | { readonly ok: false; readonly message: string } => {
  const values = new Map<string, string>()
  for (const list of lists) {
    for (const [name, value] of splitOptionList(list)) {
      if (!QCOW2_AMEND_OPTIONS.includes(name)) {
        const hint = CREATE_ONLY.has(name) ? "\nThis option is only supported for image creation" : ""
        return { ok: false, message: `Invalid parameter '${name}'${hint}` }
      }
      values.set(name, value)
    }
  }
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
  if ([...values.keys()].some((n) => n.startsWith("encrypt."))) out.encryption = true
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

/** `qcow2 amend`: qemu-img amend for qcow2 images. */
export const runAmend = (o: AmendCommandOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    const badList = invalidOptionList(o.options)
    if (badList !== undefined) return yield* Effect.fail(fail(`Invalid option list: ${badList}`))
    if (o.options.length === 0) return yield* Effect.fail(usage("Must specify options (-o)"))
    const help = asksForHelp(o.options)
    if (o.format !== undefined && help) {
      if (o.format !== "qcow2") return yield* Effect.fail(fail(`Format driver '${o.format}' does not support option amendment`))
      print(amendHelp())
      return 0
    }
    if (o.file === "") return yield* Effect.fail(fail("Expecting one image file name"))
    const opened = yield* Effect.scoped(
      openNamed(o.file, {
        readOnly: false,
        ...(o.format !== undefined ? { format: o.format } : {}),
        ...(o.secrets.passphrase !== undefined ? { passphrase: o.secrets.passphrase } : {})
      }).pipe(Effect.map(({ image, file }) => ({ format: image.format, file })))
    ).pipe(Effect.mapError(({ error, file }) => openFailure(file, error)))
    if (opened.format !== "qcow2") return yield* Effect.fail(fail(`Format driver '${opened.format}' does not support option amendment`))
    if (help) {
      print(amendHelp())
      return 0
    }
    const parsed = parseAmendOptions(o.options)
    if (!parsed.ok) return yield* Effect.fail(fail(parsed.message))
    const line = new AmendProgressLine(o.progress && !o.quiet)
    line.print(0)
    const result = yield* amendImage(
      opened.file,
      parsed.options,
      { format: "qcow2", ...(o.secrets.passphrase !== undefined ? { passphrase: o.secrets.passphrase } : {}) },
      (done, total) => line.print(total === 0 ? 0 : (100 * done) / total)
    ).pipe(
      Effect.as(undefined),
      Effect.catch((e) => Effect.succeed(e))
    )
    line.print(100)
    line.end()
    if (result !== undefined) return yield* Effect.fail(fail(result.message))
    return 0
  })
