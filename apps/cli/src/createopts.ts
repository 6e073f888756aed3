/**
 * `-o name=value,…` option lists for qcow2 and raw image creation, as
 * qemu-img parses, prints ("Formatting …") and validates them.
 */
import type { CreateOptions } from "@qcow2/image"
import { parseSizeBig } from "./text/strtosz.js"

/** Splits an option list: ',' separates, ',,' is a literal comma, a bare name means "on". */
export const splitOptionList = (text: string): Array<readonly [string, string]> => {
  const result: Array<readonly [string, string]> = []
  let current = ""
  const items: string[] = []
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!
    if (ch === ",") {
      if (text[i + 1] === ",") {
        current += ","
        i++
        continue
      }
      items.push(current)
      current = ""
      continue
    }
    current += ch
  }
  items.push(current)
  for (const item of items) {
    if (item === "") continue
    const eq = item.indexOf("=")
    if (eq < 0) result.push([item, "on"])
    else result.push([item.slice(0, eq), item.slice(eq + 1)])
  }
  return result
}

type OptionType = "size" | "number" | "bool" | "string"

interface OptionDesc {
  readonly name: string
  readonly type: OptionType
  /** Printed in the "Formatting" line even when not given. */
  readonly def?: string
}

/**
 * qcow2's creation options in the order qemu-img 7.2 prints them in its
 * "Formatting" line (the encryption group, then the rest of the driver's
 * list, then the file protocol's options).
 */
const QCOW2_OPTIONS: ReadonlyArray<OptionDesc> = [
  { name: "encryption", type: "bool" },
  { name: "encrypt.format", type: "string" },
  { name: "encrypt.key-secret", type: "string" },
  { name: "encrypt.cipher-alg", type: "string" },
  { name: "encrypt.cipher-mode", type: "string" },
  { name: "encrypt.ivgen-alg", type: "string" },
  { name: "encrypt.ivgen-hash-alg", type: "string" },
  { name: "encrypt.hash-alg", type: "string" },
  { name: "encrypt.iter-time", type: "number" },
  { name: "cluster_size", type: "size", def: "65536" },
  { name: "extended_l2", type: "bool", def: "off" },
  { name: "preallocation", type: "string" },
  { name: "compression_type", type: "string", def: "zlib" },
  { name: "size", type: "size" },
  { name: "compat", type: "string" },
  { name: "backing_file", type: "string" },
  { name: "backing_fmt", type: "string" },
  { name: "data_file", type: "string" },
  { name: "data_file_raw", type: "bool" },
  { name: "lazy_refcounts", type: "bool", def: "off" },
  { name: "refcount_bits", type: "number", def: "16" },
  { name: "nocow", type: "bool" },
  { name: "extent_size_hint", type: "size" }
]

const RAW_OPTIONS: ReadonlyArray<OptionDesc> = [
  { name: "size", type: "size" },
  { name: "preallocation", type: "string" },
  { name: "nocow", type: "bool" },
  { name: "extent_size_hint", type: "size" }
]

/** The luks driver's creation options, in qemu-img 7.2's "Formatting" order. */
const LUKS_OPTIONS: ReadonlyArray<OptionDesc> = [
  { name: "size", type: "size" },
  { name: "key-secret", type: "string" },
  { name: "cipher-alg", type: "string" },
  { name: "cipher-mode", type: "string" },
  { name: "ivgen-alg", type: "string" },
  { name: "ivgen-hash-alg", type: "string" },
  { name: "hash-alg", type: "string" },
  { name: "iter-time", type: "number" },
  { name: "nocow", type: "bool" },
  { name: "preallocation", type: "string" },
  { name: "extent_size_hint", type: "size" }
]

export type CreateFormat = "qcow2" | "raw" | "luks"

export const optionDescs = (format: CreateFormat): ReadonlyArray<OptionDesc> => {
  switch (format) {
    case "qcow2":
      return QCOW2_OPTIONS
    case "raw":
      return RAW_OPTIONS
    case "luks":
      return LUKS_OPTIONS
  }
}

/** Parsed option values: the text qemu-img keeps (sizes and numbers normalized). */
export type OptionValues = Map<string, string>

export type ParseResult = { readonly ok: true; readonly values: OptionValues } | { readonly ok: false; readonly message: string }

const parseNumber = (text: string): number | undefined => {
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) return parseInt(text.slice(2), 16)
  if (/^0[0-7]+$/.test(text)) return parseInt(text, 8)
  if (/^[0-9]+$/.test(text)) return parseInt(text, 10)
  // strtoull takes a sign: "-1" is a (huge) number, refused later as a value.
  if (/^-[0-9]+$/.test(text)) return -parseInt(text.slice(1), 10)
  return undefined
}

const BOOL_TRUE = new Set(["on", "yes", "true", "y"])
const BOOL_FALSE = new Set(["off", "no", "false", "n"])

/** Parses the joined `-o` lists against the format's option descriptions (syntax and types only). */
export const parseCreateOptions = (format: CreateFormat, lists: ReadonlyArray<string>): ParseResult => {
  const descs = optionDescs(format)
  const values: OptionValues = new Map()
  for (const list of lists) {
    for (const [name, value] of splitOptionList(list)) {
      const desc = descs.find((d) => d.name === name)
      if (desc === undefined) return { ok: false, message: `Invalid parameter '${name}'` }
      switch (desc.type) {
        case "size": {
          const r = parseSizeBig(value)
          if (!r.ok) {
            return {
              ok: false,
              message:
                `Parameter '${name}' expects a non-negative number below 2^64\n` +
                "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
            }
          }
          values.set(name, String(r.value))
          break
        }
        case "number": {
          const n = parseNumber(value)
          if (n === undefined) return { ok: false, message: `Parameter '${name}' expects a number` }
          values.set(name, String(n))
          break
        }
        case "bool":
          if (!BOOL_TRUE.has(value) && !BOOL_FALSE.has(value)) return { ok: false, message: `Parameter '${name}' expects 'on' or 'off'` }
          values.set(name, value)
          break
        case "string":
          values.set(name, value)
      }
    }
  }
  return { ok: true, values }
}

const isOn = (v: string | undefined): boolean => v !== undefined && BOOL_TRUE.has(v)

/** The "Formatting 'FILE', fmt=… …" line qemu-img prints before creating. */
export const formattingLine = (file: string, format: CreateFormat, values: OptionValues): string => {
  const parts = [`Formatting '${file}', fmt=${format}`]
  for (const d of optionDescs(format)) {
    const v = values.get(d.name) ?? d.def
    if (v === undefined) continue
    parts.push(`${d.name}=${d.type === "string" ? v.replace(/,/g, ",,") : v}`)
  }
  return parts.join(" ")
}

/**
 * Turns the option values into the driver's CreateOptions, with qemu-img's
 * messages for invalid combinations (qcow2_co_create_opts/qcow2_co_create).
 */
export const toCreateOptions = (
  values: OptionValues,
  passphrase: Uint8Array | undefined
): { readonly ok: true; readonly options: CreateOptions } | { readonly ok: false; readonly message: string } => {
  const bad = (message: string) => ({ ok: false as const, message })
  const compatText = values.get("compat")
  let compat: "0.10" | "1.1" = "1.1"
  if (compatText !== undefined) {
    if (compatText === "0.10" || compatText === "v2") compat = "0.10"
    else if (compatText === "1.1" || compatText === "v3") compat = "1.1"
    else return bad(`Parameter 'version' does not accept value '${compatText}'`)
  }
  const v3 = compat === "1.1"
  const clusterSize = Number(values.get("cluster_size") ?? 65536)
  const extendedL2 = isOn(values.get("extended_l2"))
  const refcountBits = Number(values.get("refcount_bits") ?? 16)
  const lazyRefcounts = isOn(values.get("lazy_refcounts"))
  const compression = values.get("compression_type") ?? "zlib"
  const preallocation = values.get("preallocation") ?? "off"
  const backingFile = values.get("backing_file")
  const backingFormat = values.get("backing_fmt")
  const dataFile = values.get("data_file")
  const dataFileRaw = isOn(values.get("data_file_raw"))
  const encryptFormat = values.get("encrypt.format") ?? (isOn(values.get("encryption")) ? "aes" : undefined)

  if (backingFormat !== undefined && backingFile === undefined) return bad("Backing format cannot be used without backing file")
  if (!(clusterSize >= 512 && clusterSize <= 2 * 1024 * 1024 && (clusterSize & (clusterSize - 1)) === 0)) {
    return bad("Cluster size must be a power of two between 512 and 2048k")
  }
  if (!["off", "metadata", "falloc", "full"].includes(preallocation)) return bad(`Parameter 'preallocation' does not accept value '${preallocation}'`)
  if (compression !== "zlib" && compression !== "zstd") return bad(`Parameter 'compression-type' does not accept value '${compression}'`)
  if (backingFile !== undefined && preallocation !== "off" && !extendedL2) {
    return bad("Backing file and preallocation can only be used at the same time if extended_l2 is on")
  }
  if (!v3 && lazyRefcounts) return bad("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
  if (!(refcountBits >= 1 && refcountBits <= 64 && (refcountBits & (refcountBits - 1)) === 0)) {
    return bad("Refcount width must be a power of two and may not exceed 64 bits")
  }
  if (!v3 && refcountBits !== 16) {
    return bad("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)")
  }
  if (!v3 && dataFile !== undefined) return bad("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
  if (dataFileRaw && dataFile === undefined) return bad("data-file-raw requires data-file")
  if (!v3 && extendedL2) return bad("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
  if (extendedL2 && clusterSize < 16384) return bad("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
  if (!v3 && compression !== "zlib") {
    return bad("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
  }
  let encryption: CreateOptions["encryption"]
  if (encryptFormat !== undefined) {
    if (encryptFormat !== "aes" && encryptFormat !== "luks") return bad(`Parameter 'format' does not accept value '${encryptFormat}'`)
    if (passphrase === undefined) return bad("Parameter 'encrypt.key-secret' is required for cipher")
    const iter = values.get("encrypt.iter-time")
    encryption = {
      format: encryptFormat,
      passphrase,
      ...(values.has("encrypt.cipher-alg") ? { cipherAlg: values.get("encrypt.cipher-alg")! } : {}),
      ...(values.has("encrypt.cipher-mode") ? { cipherMode: values.get("encrypt.cipher-mode")! } : {}),
      ...(values.has("encrypt.ivgen-alg") ? { ivgenAlg: values.get("encrypt.ivgen-alg")! } : {}),
      ...(values.has("encrypt.ivgen-hash-alg") ? { ivgenHashAlg: values.get("encrypt.ivgen-hash-alg")! } : {}),
      ...(values.has("encrypt.hash-alg") ? { hashAlg: values.get("encrypt.hash-alg")! } : {}),
      ...(iter !== undefined ? { iterTimeMs: Number(iter) } : {})
    }
  }
  const size = values.get("size")
  return {
    ok: true,
    options: {
      ...(size !== undefined ? { size: Number(size) } : {}),
      clusterSize,
      compat,
      refcountBits,
      lazyRefcounts,
      extendedL2,
      compressionType: compression,
      ...(backingFile !== undefined ? { backingFile } : {}),
      ...(backingFormat !== undefined ? { backingFormat: backingFormat as "qcow2" | "raw" } : {}),
      ...(dataFile !== undefined ? { dataFile, dataFileRaw } : {}),
      preallocation: preallocation as "off" | "metadata" | "falloc" | "full",
      ...(encryption !== undefined ? { encryption } : {})
    }
  }
}
