/**
 * printf-style number formatting with C (glibc) semantics, so output matches
 * qemu-img/qemu-io byte for byte. glibc formats the exact binary value of a
 * double and breaks ties to even; JavaScript's toFixed breaks ties upward, so
 * these helpers do the rounding themselves with BigInt (they run a few times
 * per command, never per cluster).
 */

const f64 = new DataView(new ArrayBuffer(8))

/** `x = mantissa * 2^exponent` exactly, for finite non-negative x. */
const decompose = (x: number): { mantissa: bigint; exponent: number } => {
  f64.setFloat64(0, x)
  const hi = f64.getUint32(0)
  const lo = f64.getUint32(4)
  const biased = (hi >>> 20) & 0x7ff
  const fractionHigh = hi & 0xfffff
  let mantissa = (BigInt(fractionHigh) << 32n) | BigInt(lo)
  if (biased === 0) return { mantissa, exponent: -1074 }
  mantissa |= 1n << 52n
  return { mantissa, exponent: biased - 1075 }
}

/** round-half-even(|x| * 10^digits) as an exact integer; `digits` may be negative. */
const scaledRound = (x: number, digits: number): bigint => {
  const { mantissa, exponent } = decompose(Math.abs(x))
  let num = mantissa
  let den = 1n
  if (exponent >= 0) num <<= BigInt(exponent)
  else den <<= BigInt(-exponent)
  if (digits >= 0) num *= 10n ** BigInt(digits)
  else den *= 10n ** BigInt(-digits)
  const q = num / den
  const r2 = (num % den) * 2n
  if (r2 > den || (r2 === den && (q & 1n) === 1n)) return q + 1n
  return q
}

const withPoint = (digitsValue: bigint, decimals: number): string => {
  let s = digitsValue.toString()
  if (decimals === 0) return s
  if (s.length <= decimals) s = "0".repeat(decimals - s.length + 1) + s
  return `${s.slice(0, s.length - decimals)}.${s.slice(s.length - decimals)}`
}

const sign = (x: number): string => (x < 0 || Object.is(x, -0) ? "-" : "")

/** C `%.{digits}f`. */
export const cFixed = (x: number, digits: number): string => {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf"
  return sign(x) + withPoint(scaledRound(x, digits), digits)
}

/** C `%{width}.{digits}f` with zero padding (`%05.2f`) or space padding. */
export const cFixedPadded = (x: number, digits: number, width: number, zeroPad: boolean): string => {
  const s = cFixed(x, digits)
  if (s.length >= width) return s
  if (!zeroPad) return " ".repeat(width - s.length) + s
  const neg = s.startsWith("-")
  const body = neg ? s.slice(1) : s
  return (neg ? "-" : "") + "0".repeat(width - s.length) + body
}

const stripZeros = (s: string): string => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s)

/** C `%.{precision}g` (no `#` flag: trailing zeros removed). */
export const cGeneral = (x: number, precision: number): string => {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf"
  const p = precision === 0 ? 1 : precision
  if (x === 0) return `${sign(x)}0`
  const ax = Math.abs(x)
  // Find the decimal exponent X of the value rounded to p significant digits.
  let exp = Math.floor(Math.log10(ax))
  let q = scaledRound(ax, p - 1 - exp)
  const upper = 10n ** BigInt(p)
  const lower = 10n ** BigInt(p - 1)
  if (q >= upper) {
    exp += 1
    q = scaledRound(ax, p - 1 - exp)
  } else if (q < lower) {
    exp -= 1
    q = scaledRound(ax, p - 1 - exp)
    if (q >= upper) {
      exp += 1
      q = scaledRound(ax, p - 1 - exp)
    }
  }
  if (exp < -4 || exp >= p) {
    const mant = stripZeros(withPoint(q, p - 1))
    const e = Math.abs(exp)
    return `${sign(x)}${mant}e${exp < 0 ? "-" : "+"}${e < 10 ? "0" : ""}${e}`
  }
  return sign(x) + stripZeros(withPoint(scaledRound(ax, p - 1 - exp), p - 1 - exp))
}

/** C `%#x` for a non-negative integer: `0` stays `0`, anything else gets `0x`. */
export const cAltHex = (n: number): string => (n === 0 ? "0" : `0x${n.toString(16)}`)

/** C `%-{width}s`. */
export const padRight = (s: string, width: number): string => (s.length >= width ? s : s + " ".repeat(width - s.length))

/** C `%{width}s`. */
export const padLeft = (s: string, width: number): string => (s.length >= width ? s : " ".repeat(width - s.length) + s)
