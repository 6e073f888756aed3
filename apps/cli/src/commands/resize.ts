import { Effect } from "effect"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import { eprint, print } from "../output.js"
import { programName } from "../progname.js"
import { parseSizeBig } from "../text/strtosz.js"

export interface ResizeOptions {
  readonly file: string
  /** The size word as given: `[+|-]SIZE`. */
  readonly size: string
  readonly format?: CliFormat
  readonly preallocation?: string
  readonly shrink: boolean
  readonly quiet: boolean
  readonly passphrase?: Uint8Array
}

const PREALLOCATION_MODES = ["off", "metadata", "falloc", "full"] as const
type PreallocationMode = (typeof PREALLOCATION_MODES)[number]

const isMode = (text: string): text is PreallocationMode => (PREALLOCATION_MODES as ReadonlyArray<string>).includes(text)

const SIZE_HINT = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."

/** The size word: its sign (relative resize) and magnitude, as qemu-img's size option parses it (uint64). */
const parseResizeSize = (word: string): Effect.Effect<{ readonly relative: -1 | 0 | 1; readonly amount: bigint }, CliFailure> => {
  const relative = word.startsWith("+") ? 1 : word.startsWith("-") ? -1 : 0
  const text = relative === 0 ? word : word.slice(1)
  const r = parseSizeBig(text)
  if (r.ok) return Effect.succeed({ relative, amount: r.value })
  if (r.reason === "range") return Effect.fail(fail(`Value '${text}' is out of range for parameter 'size'`))
  return Effect.fail(fail(`Parameter 'size' expects a non-negative number below 2^64\n${SIZE_HINT}`))
}

/**
 * `qcow2 resize`: qemu-img resize. The size is parsed first, then the image
 * opened read-write; the new size (absolute, or relative with + or -) is
 * checked in qemu-img's order (positive, preallocation only when growing,
 * --shrink for a smaller size) before the driver truncates.
 */
export const runResize = (o: ResizeOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.gen(function* () {
    let preallocation: PreallocationMode = "off"
    if (o.preallocation !== undefined) {
      if (!isMode(o.preallocation)) return yield* Effect.fail(fail(`Invalid preallocation mode '${o.preallocation}'`))
      preallocation = o.preallocation
    }
    const { relative, amount } = yield* parseResizeSize(o.size)
    return yield* Effect.scoped(
      Effect.gen(function* () {
        const image = yield* open(o.file, {
          readOnly: false,
          ...(o.format !== undefined ? { format: o.format } : {}),
          ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {})
        })
        const current = BigInt(image.virtualSize)
        // qemu-img computes in int64: a size of 2^63 or more is negative.
        const signed = BigInt.asIntN(64, amount)
        const total = relative === 0 ? signed : BigInt.asIntN(64, current + signed * BigInt(relative))
        if (total <= 0n) return yield* Effect.fail(fail("New image size must be positive"))
        if (total <= current && preallocation !== "off") return yield* Effect.fail(fail("Preallocation can only be used for growing images"))
        if (total < current && !o.shrink) {
          eprint(
            `${programName}: Use the --shrink option to perform a shrink operation.\n` +
              `${programName}: warning: Shrinking an image will delete all data beyond the shrunken image's end. ` +
              "Before performing such an operation, make sure there is no important data there.\n"
          )
          return 1
        }
        if (total > BigInt(Number.MAX_SAFE_INTEGER)) {
          return yield* Effect.fail(fail(image.format === "qcow2" ? "Failed to grow the L1 table: File too large" : "Failed to resize file: File too large"))
        }
        yield* image
          .truncate(Number(total), { shrink: true, preallocation })
          .pipe(Effect.mapError((e) => fail(e.message)))
        if (!o.quiet) print("Image resized.\n")
        return 0
      })
    )
  })
