import { cFixed, cFixedPadded, cGeneral } from "./cformat.js"

const IEC = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] as const

/** Exponent e with 2^(e-1) <= v < 2^e (C frexp), for v > 0; 0 for v = 0. */
const frexpExponent = (v: number): number => {
  if (v === 0) return 0
  let e = Math.floor(Math.log2(v)) + 1
  while (2 ** (e - 1) > v) e -= 1
  while (2 ** e <= v) e += 1
  return e
}

/**
 * qemu-img's human size (util/cutils.c size_to_str): three significant
 * digits and an IEC unit, switching unit once the integer part reaches 1000
 * ("324 KiB", "1.25 MiB", "20 MiB", "0 B").
 */
export const sizeToStr = (bytes: number): string => {
  const e = frexpExponent(bytes / (1000 / 1024))
  const i = Math.min(Math.trunc((e - 1) / 10), IEC.length - 1)
  return `${cGeneral(bytes / 2 ** (i * 10), 3)} ${IEC[i]}B`
}

const KIB = 1024
const UNITS: ReadonlyArray<readonly [number, string]> = [
  [2 ** 60, " EiB"],
  [2 ** 50, " PiB"],
  [2 ** 40, " TiB"],
  [2 ** 30, " GiB"],
  [2 ** 20, " MiB"],
  [KIB, " KiB"]
]

/**
 * qemu-io's size text (qemu-io-cmds.c cvtstr): `%.3f` of the value in the
 * largest unit it reaches (`%f` for plain bytes), with the first ".000"
 * replaced by the unit ("64 KiB", "19.438 MiB", "40 bytes", "250.276869 bytes").
 */
export const cvtstr = (value: number): string => {
  let text: string
  let suffix = " bytes"
  const unit = UNITS.find(([size]) => value >= size)
  if (unit !== undefined) {
    text = cFixed(value / unit[0], 3)
    suffix = unit[1]
  } else {
    text = cFixed(value, 6)
  }
  const trim = text.indexOf(".000")
  return trim >= 0 ? text.slice(0, trim) + suffix : text + suffix
}

/**
 * qemu-io's elapsed time (timestr): "00.01 sec" under a minute, else
 * "h:mm:ss.ss"; `fixed` always uses the long form (the `-C` report).
 */
export const timestr = (seconds: number, fixed: boolean): string => {
  if (!fixed && seconds < 60) return `${cFixedPadded(seconds, 2, 5, true)} sec`
  const whole = Math.floor(seconds)
  const h = Math.floor(whole / 3600)
  const m = Math.floor((whole % 3600) / 60)
  const s = seconds - h * 3600 - m * 60
  return `${h}:${m < 10 ? "0" : ""}${m}:${cFixedPadded(s, 2, 5, true)}`
}
