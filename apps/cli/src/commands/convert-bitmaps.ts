/**
 * `convert --bitmaps [--skip-broken-bitmaps]`: the persistent bitmaps of
 * the (single) source copied to a qcow2 target after the data, as
 * qemu-img 7.2 does (convert_check_bitmaps / convert_copy_bitmaps).
 */
import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import { fail, type CliFailure } from "../errors.js"
import { eprint } from "../output.js"
import { programName } from "../progname.js"

/** Whether an image can hold persistent bitmaps: qcow2 v3 (v2 has no autoclear bits to guard them). */
export const supportsBitmaps = (image: Image): boolean => image.bitmaps !== undefined && image.header !== undefined && image.header.header.version >= 3

/** Refuses before anything is created: several sources, a source without bitmaps, an inconsistent bitmap unless skipped. */
export function checkBitmapsCopyable(sources: ReadonlyArray<Image>, skipBroken: boolean): Effect.Effect<void, CliFailure> {
  if (sources.length > 1) return Effect.fail(fail("Copying bitmaps only possible with single source"))
  const source = sources[0]!
  if (!supportsBitmaps(source)) return Effect.fail(fail("Source lacks bitmap support"))
  const broken = skipBroken ? undefined : source.bitmaps!.list().find((b) => b.inconsistent)
  if (broken === undefined) return Effect.void
  return Effect.fail(fail(`Cannot copy inconsistent bitmap '${broken.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`))
}

/** The target must hold bitmaps ("Format driver 'raw' does not support bitmaps"); checked once it is open. */
export function checkTargetSupportsBitmaps(target: Image | undefined, format: string): Effect.Effect<void, CliFailure> {
  return target !== undefined && supportsBitmaps(target) ? Effect.void : Effect.fail(fail(`Format driver '${format}' does not support bitmaps`))
}

/**
 * Adds each source bitmap to the target (same name, granularity and
 * enabled state) and merges the source's bits into it, in QEMU's order;
 * inconsistent ones are skipped with a warning when asked to.
 */
export function copyBitmaps(source: Image, target: Image, skipBroken: boolean): Effect.Effect<void, CliFailure> {
  return Effect.gen(function* () {
    const from = source.bitmaps!
    const into = target.bitmaps!
    for (const b of from.list()) {
      if (skipBroken && b.inconsistent) {
        eprint(`${programName}: warning: Skipping inconsistent bitmap '${b.name}'\n`)
        continue
      }
      yield* into.add(b.name, b.granularity, !b.enabled).pipe(Effect.mapError((e) => fail(`Failed to create bitmap ${b.name}: ${e.message}`)))
      const populated = yield* Effect.result(Effect.flatMap(from.contents(b.name), (contents) => into.merge(b.name, contents)))
      if (populated._tag === "Failure") {
        yield* Effect.ignore(into.remove(b.name))
        return yield* Effect.fail(fail(`Failed to populate bitmap ${b.name}: ${populated.failure.message}`))
      }
    }
  })
}
