/**
 * Size arguments as QEMU 7.2 parses them (util/cutils.c qemu_strtosz):
 * a decimal integer with an optional fraction, or a hex integer ("0x…"),
 * then an optional unit b/k/M/G/T/P/E (either case, powers of 1024).
 * A fraction needs a unit other than bytes ("1.5k" ok, "1.5" not); an
 * exponent is rejected; the result rounds half up; nothing may follow.
 */
export type SizeResult =
  | { readonly ok: true; readonly value: number; readonly hexWithSuffix: boolean }
  | { readonly ok: false; readonly reason: "invalid" | "range" }

const UNIT: Record<string, bigint> = {
  B: 1n,
  K: 1n << 10n,
  M: 1n << 20n,
  G: 1n << 30n,
  T: 1n << 40n,
  P: 1n << 50n,
  E: 1n << 60n
}

const INT64_MAX = (1n << 63n) - 1n
const invalid = { ok: false, reason: "invalid" } as const
const range = { ok: false, reason: "range" } as const

export const parseSize = (text: string): SizeResult => {
  const r = parseSizeBig(text)
  if (!r.ok) return r
  if (r.value > INT64_MAX) return range
  if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) return range
  return { ok: true, value: Number(r.value), hexWithSuffix: r.hexWithSuffix }
}

/** A size as QEMU's option parser takes it: any value below 2^64 (larger ones are "range"). */
export type BigSizeResult =
  | { readonly ok: true; readonly value: bigint; readonly hexWithSuffix: boolean }
  | { readonly ok: false; readonly reason: "invalid" | "range" }

const UINT64_MAX = (1n << 64n) - 1n

/** Parses like `parseSize`, keeping every value up to 2^64 - 1 (QEMU's size options are uint64). */
export const parseSizeBig = (text: string): BigSizeResult => {
  let i = 0
  while (i < text.length && /\s/.test(text[i]!)) i++
  if (text[i] === "-") return invalid
  if (text[i] === "+") i++
  let whole = 0n
  let fraction = 0
  let hex = false
  const hexMatch = /^0[xX]([0-9a-fA-F]+)/.exec(text.slice(i))
  if (hexMatch !== null) {
    hex = true
    whole = BigInt(`0x${hexMatch[1]}`)
    i += hexMatch[0].length
    if (text[i] === ".") return invalid
  } else {
    const digits = /^[0-9]+/.exec(text.slice(i))
    if (digits === null) return invalid
    whole = BigInt(digits[0])
    i += digits[0].length
    if (text[i] === ".") {
      const frac = /^\.[0-9]*(?:[eE][-+]?[0-9]+)?/.exec(text.slice(i))!
      if (/[eE]/.test(frac[0])) return invalid
      if (frac[0].length > 1) fraction = Number(frac[0])
      i += frac[0].length
    }
  }
  let multiplier = 1n
  const unit = text[i] === undefined ? undefined : UNIT[text[i]!.toUpperCase()]
  if (unit !== undefined) {
    multiplier = unit
    i++
  }
  if (i !== text.length) return invalid
  if (multiplier === 1n && fraction !== 0) return invalid
  // 64.64 fixed point, as QEMU does: the fraction keeps 64 bits.
  const fixedFraction = BigInt(Math.min(Math.trunc(fraction * 2 ** 64), 2 ** 64 - 1))
  const scaledFraction = fixedFraction * multiplier
  let value = whole * multiplier + (scaledFraction >> 64n)
  if (((scaledFraction >> 63n) & 1n) === 1n) value += 1n
  if (value > UINT64_MAX) return range
  return { ok: true, value, hexWithSuffix: hex && unit !== undefined }
}
