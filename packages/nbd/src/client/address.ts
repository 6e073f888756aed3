/**
 * The names QEMU 7.2's nbd driver opens (block/nbd.c), parsed into a
 * server address and an export:
 * - `nbd:unix:PATH[:exportname=NAME]` and `nbd:HOST:PORT[:exportname=NAME]`;
 * - URIs `nbd://HOST[:PORT]/EXPORT`, `nbd+tcp://…`, `nbd+unix:///EXPORT?socket=PATH`;
 * - the driver's options (`server.type=unix,server.path=…`, `server.type=inet,
 *   server.host=…,server.port=…`, the older `path` / `host` / `port`,
 *   `export`, `x-dirty-bitmap`), as --image-opts and `json:{…}` give them.
 * `nbdNameOf` turns a target back into one name this module parses, and
 * `displayNameOf` gives the name QEMU shows for it (its refreshed filename).
 * Messages for bad names are QEMU's.
 */

/** Where the server listens. */
export type NbdServerAddress = { readonly type: "unix"; readonly path: string } | { readonly type: "inet"; readonly host: string; readonly port: number }

/** What to connect to and which export to open. */
export interface NbdTarget {
  readonly server: NbdServerAddress
  /** The export name ("" = the server's default export). */
  readonly exportName: string
  /**
   * QEMU's `x-dirty-bitmap`: the metadata context block status reads
   * instead of `base:allocation` (for example `qemu:allocation-depth`),
   * its flags read with base:allocation's meaning.
   */
  readonly statusContext?: string
}

/** A parsed target, or QEMU's message for what is wrong with the name. */
export type NbdTargetResult = { readonly ok: true; readonly target: NbdTarget } | { readonly ok: false; readonly message: string }

/** The default NBD port (IANA). */
export const NBD_DEFAULT_PORT = 10809

const bad = (message: string): NbdTargetResult => ({ ok: false, message })

/** True for names with one of the nbd driver's protocol prefixes (`nbd:`, `nbd+tcp:`, `nbd+unix:`). */
export const isNbdFilename = (name: string): boolean => /^nbd(\+tcp|\+unix)?:/.test(name)

/** QEMU's inet_parse of `HOST:PORT` (`[V6ADDR]:PORT` for IPv6). */
const parseInet = (spec: string): NbdServerAddress | undefined => {
  const match = /^\[([^\]]*)\]:([^,]+)$/.exec(spec) ?? /^([^:]*):([^,]+)$/.exec(spec)
  if (match === null) return undefined
  const port = Number(match[2])
  if (!Number.isInteger(port) || port < 0 || port > 65535) return undefined
  return { type: "inet", host: match[1]!, port }
}

/** `nbd://…`, `nbd+tcp://…`, `nbd+unix://…` (QEMU's nbd_parse_uri). */
const parseUri = (name: string): NbdTargetResult => {
  const invalid = bad("No valid URL specified")
  let url: URL
  try {
    url = new URL(name)
  } catch {
    return invalid
  }
  const scheme = url.protocol.slice(0, -1)
  if (scheme !== "nbd" && scheme !== "nbd+tcp" && scheme !== "nbd+unix") return invalid
  let exportName: string
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ""))
  } catch {
    return invalid
  }
  const params = [...url.searchParams]
  if (scheme === "nbd+unix") {
    if (url.host !== "" || params.length !== 1 || params[0]![0] !== "socket" || params[0]![1] === "") return invalid
    return { ok: true, target: { server: { type: "unix", path: params[0]![1] }, exportName } }
  }
  if (url.hostname === "" || params.length !== 0) return invalid
  const port = url.port === "" ? NBD_DEFAULT_PORT : Number(url.port)
  return { ok: true, target: { server: { type: "inet", host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port }, exportName } }
}

/** `nbd:unix:PATH[:exportname=NAME]`, `nbd:HOST:PORT[:exportname=NAME]` (QEMU's nbd_parse_filename). */
const parseLegacy = (name: string): NbdTargetResult => {
  const marker = name.indexOf(":exportname=")
  const exportName = marker >= 0 ? name.slice(marker + ":exportname=".length) : ""
  const file = marker >= 0 ? name.slice(0, marker) : name
  if (!file.startsWith("nbd:")) return bad("File name string for NBD must start with 'nbd:'")
  const spec = file.slice("nbd:".length)
  if (spec === "") return bad("NBD server address missing")
  if (spec.startsWith("unix:")) return { ok: true, target: { server: { type: "unix", path: spec.slice("unix:".length) }, exportName } }
  const server = parseInet(spec)
  return server === undefined ? bad(`error parsing address '${spec}'`) : { ok: true, target: { server, exportName } }
}

/** A name with an nbd protocol prefix; undefined when `name` has none. */
export const parseNbdFilename = (name: string): NbdTargetResult | undefined => {
  if (!isNbdFilename(name)) return undefined
  return name.includes("://") ? parseUri(name) : parseLegacy(name)
}

/** Options of the nbd driver that change nothing this client does (timeouts of reconnection, node names). */
const IGNORED = new Set(["reconnect-delay", "open-timeout", "node-name", "driver", "tls-hostname"])

/**
 * The nbd driver's options (dotted keys, as QEMU flattens them): the
 * server, `export`, `x-dirty-bitmap`, or `filename` with a name as above.
 * Any other key gets QEMU's refusal.
 */
export const nbdTargetFromOptions = (options: ReadonlyMap<string, string>): NbdTargetResult => {
  const get = (key: string) => options.get(key)
  for (const key of options.keys()) {
    const known = key === "filename" || key === "export" || key === "x-dirty-bitmap" || key === "path" || key === "host" || key === "port" || key === "tls-creds"
    if (!known && !IGNORED.has(key) && !key.startsWith("server.")) return bad(`Block protocol 'nbd' doesn't support the option '${key}'`)
  }
  if (get("tls-creds") !== undefined) return bad("TLS is not supported by this NBD client")
  const legacy = ["path", "host", "port"].filter((key) => get(key) !== undefined)
  const structured = [...options.keys()].some((key) => key.startsWith("server."))
  const filename = get("filename")
  let target: NbdTargetResult
  if (filename !== undefined) {
    if (legacy.length > 0 || structured || get("export") !== undefined) return bad("host/port/export/path and a file name may not be used at the same time")
    target = parseNbdFilename(filename) ?? bad("File name string for NBD must start with 'nbd:'")
  } else if (legacy.length > 0) {
    if (structured) return bad("Cannot use 'server' and path/host/port at the same time")
    const path = get("path")
    if (path !== undefined) {
      if (get("host") !== undefined || get("port") !== undefined) return bad("path and host may not be used at the same time")
      target = { ok: true, target: { server: { type: "unix", path }, exportName: get("export") ?? "" } }
    } else {
      const port = Number(get("port") ?? NBD_DEFAULT_PORT)
      if (!Number.isInteger(port) || port < 0 || port > 65535) return bad(`error parsing port '${get("port")}'`)
      target = { ok: true, target: { server: { type: "inet", host: get("host") ?? "localhost", port }, exportName: get("export") ?? "" } }
    }
  } else {
    const type = get("server.type")
    if (type === undefined) return bad(structured ? "Parameter 'type' is missing" : "NBD server address missing")
    if (type === "unix") {
      const path = get("server.path")
      if (path === undefined) return bad("Parameter 'path' is missing")
      target = { ok: true, target: { server: { type, path }, exportName: get("export") ?? "" } }
    } else if (type === "inet") {
      const host = get("server.host")
      if (host === undefined) return bad("Parameter 'host' is missing")
      const port = Number(get("server.port") ?? NBD_DEFAULT_PORT)
      if (!Number.isInteger(port) || port < 0 || port > 65535) return bad(`error parsing port '${get("server.port")}'`)
      target = { ok: true, target: { server: { type, host, port }, exportName: get("export") ?? "" } }
    } else {
      return bad(`NBD server type '${type}' is not supported`)
    }
  }
  const context = get("x-dirty-bitmap")
  return target.ok && context !== undefined ? { ok: true, target: { ...target.target, statusContext: context } } : target
}

/** The name QEMU shows for a target (bdrv_refresh_filename of its nbd driver). */
export const displayNameOf = (target: NbdTarget): string => {
  const name = target.exportName
  const server = target.server
  if (server.type === "unix") return name !== "" ? `nbd+unix:///${name}?socket=${server.path}` : `nbd+unix://?socket=${server.path}`
  return name !== "" ? `nbd://${server.host}:${server.port}/${name}` : `nbd://${server.host}:${server.port}`
}

/**
 * A name `parseNbdName` turns back into `target`: the `nbd:` form where it
 * says everything, else a `json:{"driver":"nbd",…}` name.
 */
export const nbdNameOf = (target: NbdTarget): string => {
  const { server, exportName, statusContext } = target
  const simple = !exportName.includes(":") && statusContext === undefined && (server.type === "unix" || !server.host.includes(":"))
  if (simple) {
    const where = server.type === "unix" ? `unix:${server.path}` : `${server.host}:${server.port}`
    return `nbd:${where}${exportName !== "" ? `:exportname=${exportName}` : ""}`
  }
  const json = {
    driver: "nbd",
    server: server.type === "unix" ? { type: "unix", path: server.path } : { type: "inet", host: server.host, port: String(server.port) },
    export: exportName,
    ...(statusContext !== undefined ? { "x-dirty-bitmap": statusContext } : {})
  }
  return `json:${JSON.stringify(json)}`
}

/** Flattens a JSON object's scalar values to dotted keys; undefined when a value is not a string or number. */
const flattenJson = (value: object, prefix: string, into: Map<string, string>): boolean => {
  for (const [key, child] of Object.entries(value)) {
    const dotted = prefix === "" ? key : `${prefix}.${key}`
    if (typeof child === "string" || typeof child === "number") into.set(dotted, String(child))
    else if (typeof child === "object" && child !== null && !Array.isArray(child)) {
      if (!flattenJson(child, dotted, into)) return false
    } else return false
  }
  return true
}

/**
 * Any name of an NBD export: an nbd protocol name, or a `json:` name whose
 * driver is nbd (standard JSON). Undefined for names of something else.
 */
export const parseNbdName = (name: string): NbdTargetResult | undefined => {
  const filename = parseNbdFilename(name)
  if (filename !== undefined || !name.startsWith("json:")) return filename
  let parsed: unknown
  try {
    parsed = JSON.parse(name.slice("json:".length))
  } catch {
    return undefined
  }
  if (typeof parsed !== "object" || parsed === null || (parsed as { driver?: unknown }).driver !== "nbd") return undefined
  const options = new Map<string, string>()
  return flattenJson(parsed, "", options) ? nbdTargetFromOptions(options) : bad("Invalid parameter type in the nbd options")
}
