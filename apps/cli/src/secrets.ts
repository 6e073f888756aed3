/**
 * Passphrases: qemu-img's `--object secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]`
 * objects (referenced by `encrypt.key-secret=ID`) and this tool's
 * `--passphrase-file PATH`.
 */
import * as fs from "node:fs"
import { splitOptionList } from "./createopts.js"

export interface Secrets {
  readonly byId: ReadonlyMap<string, Uint8Array>
  /** The passphrase used to open encrypted images. */
  readonly passphrase?: Uint8Array
}

export type SecretsResult = { readonly ok: true; readonly secrets: Secrets } | { readonly ok: false; readonly message: string }

const readFile = (path: string): Uint8Array | string => {
  try {
    return new Uint8Array(fs.readFileSync(path))
  } catch (e) {
    return `Unable to read ${path}: ${e instanceof Error ? e.message : String(e)}`
  }
}

/** Parses `--object` definitions and `--passphrase-file`; only `secret` objects are supported. */
export const parseSecrets = (objects: ReadonlyArray<string>, passphraseFile: string | undefined): SecretsResult => {
  const byId = new Map<string, Uint8Array>()
  for (const def of objects) {
    const fields = splitOptionList(def)
    const first = fields[0]
    const type = first !== undefined && first[1] === "on" ? first[0] : fields.find(([k]) => k === "qom-type")?.[1]
    if (type !== "secret") return { ok: false, message: `Object type '${type ?? ""}' is not supported (only 'secret')` }
    const props = new Map(fields.slice(1))
    const id = props.get("id")
    if (id === undefined) return { ok: false, message: "Parameter 'id' is missing" }
    let bytes: Uint8Array
    const data = props.get("data")
    const file = props.get("file")
    if (data !== undefined && file !== undefined) return { ok: false, message: "'data' and 'file' are mutually exclusive" }
    if (data !== undefined) bytes = new TextEncoder().encode(data)
    else if (file !== undefined) {
      const r = readFile(file)
      if (typeof r === "string") return { ok: false, message: r }
      bytes = r
    } else return { ok: false, message: "Either 'data' or 'file' must be provided" }
    if (props.get("format") === "base64") bytes = new Uint8Array(Buffer.from(new TextDecoder().decode(bytes), "base64"))
    byId.set(id, bytes)
  }
  let passphrase: Uint8Array | undefined
  if (passphraseFile !== undefined) {
    const r = readFile(passphraseFile)
    if (typeof r === "string") return { ok: false, message: r }
    // A trailing newline from `echo pass > file` is not part of the passphrase.
    let end = r.length
    while (end > 0 && (r[end - 1] === 0x0a || r[end - 1] === 0x0d)) end--
    passphrase = r.subarray(0, end)
  } else if (byId.size > 0) {
    passphrase = byId.values().next().value
  }
  return { ok: true, secrets: { byId, ...(passphrase !== undefined ? { passphrase } : {}) } }
}
