/**
 * QEMU's null-co device as a name opens it (block/null.c): the root node
 * `json:{"driver":"null-co","size":N,"read-zeroes":true}` (also
 * `--image-opts driver=null-co,…`, qemu-io's `-f null-co null-co://`), or
 * the protocol name `null-co://`, which QEMU probes as raw over the device.
 */
import { NULL_CO_DEFAULT_SIZE, NULL_CO_NAME } from "@qcow2/image"
import { parseSize } from "./text/strtosz.js"

/** The device a null-co node describes, and the format opened over it. */
export interface NullDevice {
  readonly size: number
  readonly readZeroes: boolean
  /** `null-co`: the device itself is the top node; `raw`: raw over it (a probed `null-co://` name). */
  readonly format: "null-co" | "raw"
}

/** Options of the null-co driver that only tune what this toolkit does not model (latency-ns delays completions). */
const IGNORED = new Set(["latency-ns"])

/** Block-layer options every node takes (bdrv_open_common), which change nothing for this device. */
const COMMON = new Set(["driver", "node-name", "read-only", "auto-read-only", "force-share", "discard", "detect-zeroes", "cache.direct", "cache.no-flush"])

const BOOL_TRUE = new Set(["on", "yes", "true", "y"])
const BOOL_FALSE = new Set(["off", "no", "false", "n"])

/** The name a null-co protocol name must be (null_file_open); anything after `null-co://` is refused. */
export const isNullCoName = (name: string): boolean => name.startsWith("null-co:")

/**
 * The null-co device of `options` (keys of the null-co node: size,
 * read-zeroes, filename …) and the file name given apart, with QEMU's
 * messages for what it refuses.
 */
export const nullDeviceOf = (
  options: ReadonlyMap<string, string | null>,
  name: string | undefined,
  format: NullDevice["format"]
): { readonly ok: true; readonly device: NullDevice } | { readonly ok: false; readonly message: string } => {
  let size = NULL_CO_DEFAULT_SIZE
  let readZeroes = false
  const filename = options.get("filename") ?? name
  if (filename !== undefined && filename !== NULL_CO_NAME) return { ok: false, message: `The only allowed filename for this driver is '${NULL_CO_NAME}'` }
  for (const [key, value] of options) {
    if (key === "filename" || COMMON.has(key) || key.startsWith("cache.")) continue
    if (key === "size" || IGNORED.has(key)) {
      const parsed = typeof value === "string" ? parseSize(value) : undefined
      if (parsed === undefined || !parsed.ok) return { ok: false, message: `Parameter '${key}' expects a non-negative number below 2^64` }
      if (key === "size") size = parsed.value
    } else if (key === "read-zeroes") {
      if (value === null || (!BOOL_TRUE.has(value) && !BOOL_FALSE.has(value))) return { ok: false, message: "Parameter 'read-zeroes' expects 'on' or 'off'" }
      readZeroes = BOOL_TRUE.has(value)
    } else {
      return { ok: false, message: `Block protocol 'null-co' doesn't support the option '${key}'` }
    }
  }
  return { ok: true, device: { size, readZeroes, format } }
}
