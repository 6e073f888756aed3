/**
 * JSON and "human" dumps of QAPI values in the exact shape qemu-img prints.
 *
 * QEMU builds a QDict (a 512-bucket hash table, qobject/qdict.c) from each
 * QAPI struct and prints it by walking the buckets in order; within one
 * bucket the entry inserted last comes first. So the key order of
 * `qemu-img info --output=json` is a function of the key names (and, on a
 * collision, of the struct's field order). `QDict` below records the fields
 * in struct order and `orderedKeys` reproduces the walk.
 */

export type QValue = string | number | bigint | boolean | QDict | ReadonlyArray<QValue>

/** An object whose fields were inserted in QAPI struct order. */
export class QDict {
  readonly entries: Array<readonly [string, QValue]> = []

  /** Adds a field; `undefined` means "absent" (QAPI has_xxx = false). */
  set(key: string, value: QValue | undefined): this {
    if (value === undefined) return this
    const at = this.entries.findIndex(([k]) => k === key)
    if (at >= 0) this.entries[at] = [key, value]
    else this.entries.push([key, value])
    return this
  }

  /** Removes a field (QEMU's qdict_del). */
  delete(key: string): this {
    const at = this.entries.findIndex(([k]) => k === key)
    if (at >= 0) this.entries.splice(at, 1)
    return this
  }

  get(key: string): QValue | undefined {
    return this.entries.find(([k]) => k === key)?.[1]
  }

  static of(fields: ReadonlyArray<readonly [string, QValue | undefined]>): QDict {
    const d = new QDict()
    for (const [k, v] of fields) d.set(k, v)
    return d
  }
}

const BUCKETS = 512

/** The tdb hash QEMU's QDict uses, reduced to a bucket index. */
export const qdictBucket = (key: string): number => {
  const bytes = new TextEncoder().encode(key)
  let value = Math.imul(0x238f13af, bytes.length) >>> 0
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0
  }
  return ((Math.imul(1103515243, value) + 12345) >>> 0) % BUCKETS
}

/** Keys in the order QEMU iterates them. */
export const orderedKeys = (dict: QDict): Array<readonly [string, QValue]> => {
  const withBucket = dict.entries.map((entry, index) => ({ entry, index, bucket: qdictBucket(entry[0]) }))
  withBucket.sort((a, b) => a.bucket - b.bucket || b.index - a.index)
  return withBucket.map((x) => x.entry)
}

const isContainer = (v: QValue): v is QDict | ReadonlyArray<QValue> => v instanceof QDict || Array.isArray(v)

/** A JSON string as QEMU's json-writer quotes it (non-ASCII as \uXXXX). */
export const quoteJson = (s: string): string => {
  let out = '"'
  for (const ch of s) {
    const cp = ch.codePointAt(0)!
    switch (ch) {
      case '"':
        out += '\\"'
        break
      case "\\":
        out += "\\\\"
        break
      case "\b":
        out += "\\b"
        break
      case "\f":
        out += "\\f"
        break
      case "\n":
        out += "\\n"
        break
      case "\r":
        out += "\\r"
        break
      case "\t":
        out += "\\t"
        break
      default:
        if (cp > 0xffff) {
          const hi = 0xd800 + ((cp - 0x10000) >> 10)
          const lo = 0xdc00 + ((cp - 0x10000) & 0x3ff)
          out += `\\u${hi.toString(16).toUpperCase().padStart(4, "0")}\\u${lo.toString(16).toUpperCase().padStart(4, "0")}`
        } else if (cp < 0x20 || cp >= 0x7f) {
          out += `\\u${cp.toString(16).toUpperCase().padStart(4, "0")}`
        } else {
          out += ch
        }
    }
  }
  return `${out}"`
}

const scalar = (v: QValue): string => {
  if (typeof v === "string") return quoteJson(v)
  if (typeof v === "boolean") return v ? "true" : "false"
  return String(v)
}

/**
 * Pretty JSON as qobject_to_json_pretty prints it: four-space indent, one
 * member per line, and an empty container still opens a line ("[\n    ]").
 */
export const toQemuJson = (value: QValue): string => {
  const out: string[] = []
  const emit = (v: QValue, depth: number): void => {
    if (!isContainer(v)) {
      out.push(scalar(v))
      return
    }
    const isArray = Array.isArray(v)
    out.push(isArray ? "[" : "{")
    const items: ReadonlyArray<readonly [string | undefined, QValue]> = isArray
      ? (v as ReadonlyArray<QValue>).map((x) => [undefined, x] as const)
      : orderedKeys(v as QDict)
    const inner = "\n" + " ".repeat((depth + 1) * 4)
    items.forEach(([key, item], i) => {
      out.push(i === 0 ? inner : `,${inner}`)
      if (key !== undefined) out.push(`${quoteJson(key)}: `)
      emit(item, depth + 1)
    })
    out.push("\n" + " ".repeat(depth * 4) + (isArray ? "]" : "}"))
  }
  emit(value, 0)
  return out.join("")
}

/**
 * The "human" dump of a QAPI value (block/qapi.c dump_qobject): dict keys
 * with '-' turned into ' ', lists as "[i]:", four spaces per level.
 */
export const dumpHuman = (value: QValue, indentation: number): string => {
  const lines: string[] = []
  const pad = (n: number): string => " ".repeat(n * 4)
  const dumpValue = (v: QValue, indent: number): void => {
    if (v instanceof QDict) {
      for (const [key, item] of orderedKeys(v)) {
        const name = key.replace(/-/g, " ")
        if (isContainer(item)) {
          lines.push(`${pad(indent)}${name}:\n`)
          dumpValue(item, indent + 1)
        } else {
          lines.push(`${pad(indent)}${name}: ${humanScalar(item)}\n`)
        }
      }
    } else if (Array.isArray(v)) {
      v.forEach((item: QValue, i: number) => {
        if (isContainer(item)) {
          lines.push(`${pad(indent)}[${i}]:\n`)
          dumpValue(item, indent + 1)
        } else {
          lines.push(`${pad(indent)}[${i}]: ${humanScalar(item)}\n`)
        }
      })
    } else {
      lines.push(humanScalar(v as string | number | bigint | boolean))
    }
  }
  dumpValue(value, indentation)
  return lines.join("")
}

const humanScalar = (v: string | number | bigint | boolean): string => (typeof v === "boolean" ? (v ? "true" : "false") : String(v))

/**
 * One-line JSON as qobject_to_json prints it (", " and ": " between
 * members, keys in QDict order): the `json:{…}` name QEMU gives a node
 * opened with options it cannot name by a file (bdrv_refresh_filename).
 */
export const toQemuJsonLine = (value: QValue): string => {
  if (!isContainer(value)) return scalar(value)
  if (Array.isArray(value)) return `[${(value as ReadonlyArray<QValue>).map(toQemuJsonLine).join(", ")}]`
  return `{${orderedKeys(value as QDict)
    .map(([key, item]) => `${quoteJson(key)}: ${toQemuJsonLine(item)}`)
    .join(", ")}}`
}
