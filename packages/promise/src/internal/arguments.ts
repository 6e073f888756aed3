/**
 * Checks of what a JavaScript caller (no type checker) can pass that the
 * types rule out: a format name, a repair mode, a byte array. Each failure
 * is an ImageError with reason InvalidArgument and qemu-img's wording
 * ("Unknown driver" for an input format, "Unknown file format" for an
 * output one), instead of a TypeError deep inside or a silently ignored
 * option.
 */
import { Effect } from "effect"
import { ImageError as EffectImageError } from "@qcow2/image"

const invalid = (location: string, message: string) => new EffectImageError({ reason: "InvalidArgument", message, location })

/** `-f FMT` of an image being opened: undefined (probe) or one this package opens. */
export const inputFormat = (location: string, format: unknown): Effect.Effect<void, EffectImageError> =>
  format === undefined || format === "qcow2" || format === "raw" || format === "luks"
    ? Effect.void
    : Effect.fail(invalid(location, `Could not open '${location}': Unknown driver '${String(format)}'`))

/** `-f FMT` of `create` or `-O FMT` of `convert`: one of `allowed` (or undefined for the default); `message` words the refusal. */
export const outputFormat = (location: string, format: unknown, allowed: ReadonlyArray<string>, message: (format: string) => string): Effect.Effect<void, EffectImageError> =>
  format === undefined || allowed.includes(String(format)) ? Effect.void : Effect.fail(invalid(location, message(String(format))))

/** `check -r leaks|all`. */
export const repairMode = (location: string, repair: unknown): Effect.Effect<void, EffectImageError> =>
  repair === undefined || repair === "leaks" || repair === "all" ? Effect.void : Effect.fail(invalid(location, `Unknown option value for -r (expecting 'leaks' or 'all'): ${String(repair)}`))

/** A buffer a request reads from or into. */
export const bytes = (location: string, value: unknown): Effect.Effect<void, EffectImageError> =>
  value instanceof Uint8Array ? Effect.void : Effect.fail(invalid(location, "expected a Uint8Array"))
