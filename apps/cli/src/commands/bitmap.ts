import { Effect } from "effect"
import { openImage, type Image, type ImageFormat, type PersistentBitmaps } from "@qcow2/image"
import { defaultBitmapGranularity } from "@qcow2/format"
import { open, type ImageEnv, type CliFormat } from "../env.js"
import { type CliFailure, fail, openFailure } from "../errors.js"

/** One action of `qemu-img bitmap`, in command-line order. */
export type BitmapAction =
  | { readonly kind: "add" | "remove" | "clear" | "enable" | "disable" }
  | { readonly kind: "merge"; readonly source: string }

const SWITCHES = new Set(["add", "remove", "clear", "enable", "disable"])

/** Options of the bitmap subcommand whose value is the next word (so that word is not read as an action). */
const VALUE_OPTIONS = new Set(["-f", "-g", "-b", "-F", "--format", "--granularity", "--source-file", "--source-format", "--object", "--passphrase-file"])

/**
 * The actions of a `bitmap` command line in the order given: qemu-img runs
 * them in that order (`--remove --add` re-creates a bitmap, `--add --merge`
 * fills a new one). `words` are the normalised words after "bitmap".
 */
export function bitmapActions(words: ReadonlyArray<string>): BitmapAction[] {
  const actions: BitmapAction[] = []
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!
    if (word === "--") break
    if (VALUE_OPTIONS.has(word)) {
      i++
      continue
    }
    if (!word.startsWith("--")) continue
    const eq = word.indexOf("=")
    const name = word.slice(2, eq === -1 ? undefined : eq)
    if (SWITCHES.has(name) && eq === -1) actions.push({ kind: name as "add" })
    else if (name === "merge") actions.push({ kind: "merge", source: eq === -1 ? (words[++i] ?? "") : word.slice(eq + 1) })
  }
  return actions
}

export interface BitmapOptions {
  readonly file: string
  readonly bitmap: string
  readonly actions: ReadonlyArray<BitmapAction>
  readonly format: CliFormat | undefined
  /** -g as given (0 = the default granularity), already parsed. */
  readonly granularity: number
  readonly sourceFile: string | undefined
  readonly sourceFormat: ImageFormat | undefined
  readonly passphrase?: Uint8Array
}

/**
 * `qemu-img bitmap`: opens FILE read-write without its backing chain, runs
 * the actions in order, and stops at the first failure ("Operation OP on
 * bitmap NAME failed: …", exit 1). Changes made before a failure are kept:
 * the bitmaps are stored when the image closes, as in qemu-img.
 */
export const runBitmap = (o: BitmapOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const image = yield* open(o.file, { readOnly: false, openBacking: false, format: o.format, passphrase: o.passphrase })
      let source: Image = image
      if (o.sourceFile !== undefined) {
        const name = o.sourceFile
        source = yield* openImage(name, { readOnly: true, openBacking: false, format: o.sourceFormat, passphrase: o.passphrase }).pipe(
          Effect.mapError((error) => openFailure(name, error))
        )
      }
      for (const action of o.actions) {
        yield* Effect.mapError(perform(image, source, action, o), (message) => fail(`Operation ${action.kind} on bitmap ${o.bitmap} failed: ${message}`))
      }
      return 0
    })
  )

/** One action; fails with QEMU's message. */
function perform(image: Image, source: Image, action: BitmapAction, o: BitmapOptions): Effect.Effect<void, string> {
  const target = image.bitmaps
  if (target === undefined) return Effect.fail(withoutBitmaps(action, o))
  const run = (effect: Effect.Effect<void, { readonly message: string }>) => Effect.mapError(effect, (e) => e.message)
  switch (action.kind) {
    case "add":
      // qemu-img passes -g as a 32-bit granularity; 0 means the default.
      return run(target.add(o.bitmap, o.granularity === 0 ? defaultBitmapGranularity(image.clusterSize) : o.granularity % 2 ** 32, false))
    case "remove":
      return run(target.remove(o.bitmap))
    case "clear":
      return run(target.clear(o.bitmap))
    case "enable":
      return run(target.enable(o.bitmap))
    case "disable":
      return run(target.disable(o.bitmap))
    case "merge":
      return run(merge(target, source.bitmaps, o.bitmap, action.source))
  }
}

/** Why an action fails on an image format without persistent bitmaps (raw), in QEMU's order of checks. */
function withoutBitmaps(action: BitmapAction, o: BitmapOptions): string {
  if (action.kind !== "add") return `Dirty bitmap '${o.bitmap}' not found`
  if (o.bitmap === "") return "Bitmap name cannot be empty"
  const g = o.granularity % 2 ** 32
  if (o.granularity !== 0 && (g < 512 || (g & (g - 1)) !== 0)) return "Granularity must be power of 2 and at least 512"
  // QEMU names the node after an automatic node name: "#block", a counter and two random digits.
  return `Can't store persistent bitmaps to #block1${String(Math.floor(Math.random() * 100)).padStart(2, "0")}: Operation not supported`
}

/** QEMU's order of checks: the target exists, the source exists, then the merge's own checks. */
function merge(target: PersistentBitmaps, from: PersistentBitmaps | undefined, name: string, sourceName: string): Effect.Effect<void, { readonly message: string }> {
  return Effect.gen(function* () {
    if (!target.list().some((b) => b.name === name)) return yield* Effect.fail({ message: `Dirty bitmap '${name}' not found` })
    if (from === undefined) return yield* Effect.fail({ message: `Dirty bitmap '${sourceName}' not found` })
    const contents = yield* from.contents(sourceName)
    yield* target.merge(name, contents)
  })
}
