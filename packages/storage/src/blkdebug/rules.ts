/**
 * The rules of QEMU's blkdebug filter (block/blkdebug.c, qapi
 * BlkdebugInjectErrorOptions / BlkdebugSetStateOptions), read from a
 * config file (`[inject-error]` / `[set-state]` sections of `key = "value"`
 * lines, as qemu_config_parse reads them) or from block options
 * (`inject-error.0.event=…`, the flattened form of a `json:` name's lists).
 * Messages are QEMU's.
 */
import { type DebugEvent, isDebugEvent } from "../debug-events.js"

/** The request kinds a rule can fail (QEMU's BlkdebugIOType). */
export const BLKDEBUG_IO_TYPES = ["read", "write", "write-zeroes", "discard", "flush", "block-status"] as const

export type BlkdebugIoType = (typeof BLKDEBUG_IO_TYPES)[number]

/** Without `iotype`, a rule fails every kind but block-status (QEMU's default mask). */
const DEFAULT_IO_TYPES: ReadonlyArray<BlkdebugIoType> = ["read", "write", "write-zeroes", "discard", "flush"]

/**
 * `[inject-error]`: when `event` is raised (in `state`, 0 = any), the
 * following requests of `ioTypes` touching `offset` (undefined = any) fail
 * with `errno`; after one failure when `once`. `immediately` only changes
 * when QEMU delivers the error (after a yield or not), not which request
 * fails; it is kept for completeness.
 */
export interface InjectErrorRule {
  readonly action: "inject-error"
  readonly event: DebugEvent
  readonly state: number
  readonly ioTypes: ReadonlyArray<BlkdebugIoType>
  /** A Linux errno number (5 EIO, 28 ENOSPC …); 0 injects nothing. */
  readonly errno: number
  /** The byte the failing request must cover (QEMU's `sector` × 512). */
  readonly offset: number | undefined
  readonly once: boolean
  readonly immediately: boolean
}

/** `[set-state]`: when `event` is raised in `state` (0 = any), the state becomes `newState`. */
export interface SetStateRule {
  readonly action: "set-state"
  readonly event: DebugEvent
  readonly state: number
  readonly newState: number
}

export type BlkdebugRule = InjectErrorRule | SetStateRule

/** The rules of one blkdebug node, in the order they were given (inject-error rules first, as QEMU reads them). */
export interface BlkdebugConfig {
  readonly rules: ReadonlyArray<BlkdebugRule>
}

export type BlkdebugConfigResult = { readonly ok: true; readonly config: BlkdebugConfig } | { readonly ok: false; readonly message: string }

type Group = "inject-error" | "set-state"

/** One section: its group and its `key = value` fields. */
interface Section {
  readonly group: Group
  readonly fields: ReadonlyMap<string, string>
}

const FIELDS: Record<Group, ReadonlySet<string>> = {
  "inject-error": new Set(["event", "state", "iotype", "errno", "sector", "once", "immediately"]),
  "set-state": new Set(["event", "state", "new_state"])
}

const isGroup = (name: string): name is Group => name === "inject-error" || name === "set-state"

/** QEMU's number options (qemu_strtou64 with base 0: decimal, 0x hex, 0 octal). */
const parseNumber = (key: string, text: string): number | string => {
  const t = text.trim()
  const value = /^0[xX][0-9a-fA-F]+$/.test(t) ? parseInt(t, 16) : /^0[0-7]+$/.test(t) ? parseInt(t, 8) : /^[0-9]+$/.test(t) ? Number(t) : NaN
  return Number.isSafeInteger(value) ? value : `Parameter '${key}' expects a number`
}

/** QEMU's boolean options (parse_option_bool). */
const parseBool = (key: string, text: string): boolean | string => {
  if (["on", "yes", "true", "y"].includes(text)) return true
  if (["off", "no", "false", "n"].includes(text)) return false
  return `Parameter '${key}' expects 'on' or 'off'`
}

/** A rule from one section, or QEMU's message for what is wrong with it. */
const ruleOf = (section: Section): BlkdebugRule | string => {
  for (const key of section.fields.keys()) if (!FIELDS[section.group].has(key)) return `Invalid parameter '${key}'`
  const numbers = new Map<string, number>()
  for (const key of ["state", "errno", "sector", "new_state"]) {
    const text = section.fields.get(key)
    if (text === undefined) continue
    const value = parseNumber(key, text)
    if (typeof value === "string") return value
    numbers.set(key, value)
  }
  const flags = new Map<string, boolean>()
  for (const key of ["once", "immediately"]) {
    const text = section.fields.get(key)
    if (text === undefined) continue
    const value = parseBool(key, text)
    if (typeof value === "string") return value
    flags.set(key, value)
  }
  const eventName = section.fields.get("event")
  if (eventName === undefined) return "Missing event name for rule"
  if (!isDebugEvent(eventName)) return `invalid parameter value: ${eventName}`
  const state = numbers.get("state") ?? 0
  if (section.group === "set-state") return { action: "set-state", event: eventName, state, newState: numbers.get("new_state") ?? 0 }
  const iotype = section.fields.get("iotype")
  if (iotype !== undefined && !(BLKDEBUG_IO_TYPES as ReadonlyArray<string>).includes(iotype)) return `invalid parameter value: ${iotype}`
  const sector = numbers.get("sector")
  return {
    action: "inject-error",
    event: eventName,
    state,
    ioTypes: iotype !== undefined ? [iotype as BlkdebugIoType] : DEFAULT_IO_TYPES,
    errno: numbers.get("errno") ?? 5,
    offset: sector !== undefined ? sector * 512 : undefined,
    once: flags.get("once") ?? false,
    immediately: flags.get("immediately") ?? false
  }
}

/** Rules from sections, inject-error sections first (QEMU adds them in that order). */
const configOf = (sections: ReadonlyArray<Section>): BlkdebugConfigResult => {
  const rules: BlkdebugRule[] = []
  for (const group of ["inject-error", "set-state"] as const) {
    for (const section of sections) {
      if (section.group !== group) continue
      const rule = ruleOf(section)
      if (typeof rule === "string") return { ok: false, message: rule }
      rules.push(rule)
    }
  }
  return { ok: true, config: { rules } }
}

/** A line `KEY = "VALUE"` (blanks around `=` optional, as qemu_config_parse's sscanf takes it). */
const FIELD_LINE = /^\s*(\S+?)\s*=\s*"([^"]*)"/

/** A section header `[group]` or `[group "id"]`. */
const GROUP_LINE = /^\[([^\]\s"]+)(?:\s+"[^"]*")?\]/

/**
 * The rules of a blkdebug config file. Lines starting with `#` and empty
 * lines are skipped; other lines are a section header or a quoted
 * `key = "value"` field of the section above.
 */
export const parseBlkdebugConfigFile = (text: string): BlkdebugConfigResult => {
  const sections: Array<{ group: Group; fields: Map<string, string> }> = []
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    if (line.startsWith("[")) {
      const header = GROUP_LINE.exec(line)
      if (header !== null) {
        const group = header[1]!
        if (!isGroup(group)) return { ok: false, message: `There is no option group '${group}'` }
        sections.push({ group, fields: new Map() })
        continue
      }
    }
    const field = FIELD_LINE.exec(line)
    if (field === null) return { ok: false, message: "parse error" }
    const current = sections[sections.length - 1]
    if (current === undefined) return { ok: false, message: "no group defined" }
    current.fields.set(field[1]!, field[2]!)
  }
  return configOf(sections)
}

/**
 * The rules given as block options: `inject-error.N.KEY` / `set-state.N.KEY`
 * (a list, N from 0) or `inject-error.KEY` (one rule). Other keys are not
 * looked at.
 */
export const blkdebugConfigFromOptions = (options: ReadonlyMap<string, string>): BlkdebugConfigResult => {
  const sections: Section[] = []
  for (const group of ["inject-error", "set-state"] as const) {
    const prefix = `${group}.`
    const byIndex = new Map<string, Map<string, string>>()
    for (const [key, value] of options) {
      if (!key.startsWith(prefix)) continue
      const rest = key.slice(prefix.length)
      const dot = rest.indexOf(".")
      const indexed = dot > 0 && /^[0-9]+$/.test(rest.slice(0, dot))
      const index = indexed ? rest.slice(0, dot) : ""
      const field = indexed ? rest.slice(dot + 1) : rest
      const fields = byIndex.get(index) ?? new Map<string, string>()
      fields.set(field, value)
      byIndex.set(index, fields)
    }
    const order = [...byIndex.keys()].sort((a, b) => (a === "" ? -1 : b === "" ? 1 : Number(a) - Number(b)))
    for (const index of order) sections.push({ group, fields: byIndex.get(index)! })
  }
  return configOf(sections)
}

/** Both sources together: the config file's rules, then the options' (QEMU reads them in that order). */
export const mergeBlkdebugConfigs = (first: BlkdebugConfig, second: BlkdebugConfig): BlkdebugConfig => ({
  rules: [...first.rules.filter((r) => r.action === "inject-error"), ...second.rules.filter((r) => r.action === "inject-error"), ...first.rules.filter((r) => r.action === "set-state"), ...second.rules.filter((r) => r.action === "set-state")]
})
