/**
 * NBD nodes in QEMU's image names: `--image-opts driver=nbd,server.type=…`
 * (the nbd protocol driver at the root, its export read as raw bytes),
 * `file.driver=nbd,file.server…` under a format, and the same as
 * `json:{…}`. Each becomes one NBD name the storage opener opens
 * (`@qcow2/nbd/client`'s `nbdNameOf`), and shows as QEMU shows it.
 */
import { displayNameOf, nbdNameOf, nbdTargetFromOptions, parseNbdFilename, parseNbdName } from "@qcow2/nbd/client"
import type { BlockOptions } from "./qemu-filename.js"

/** Options of a node that are the block layer's, not the nbd driver's. */
const GENERIC = ["node-name", "read-only", "auto-read-only", "force-share", "discard", "detect-zeroes", "cache."]

/**
 * Takes the nbd node's keys under `prefix` ("" for the root, "file." for a
 * format's file) out of `options`: the NBD name it opens, or QEMU's
 * message for bad options.
 */
export const takeNbdNode = (options: BlockOptions, prefix: string): { readonly ok: true; readonly file: string } | { readonly ok: false; readonly message: string } => {
  const own = new Map<string, string>()
  for (const [key, value] of [...options]) {
    if (!key.startsWith(prefix)) continue
    const local = key.slice(prefix.length)
    if (prefix === "" && GENERIC.some((g) => local === g || (g.endsWith(".") && local.startsWith(g)))) continue
    options.delete(key)
    if (local === "driver") continue
    if (typeof value !== "string") return { ok: false, message: `Invalid parameter type for '${key}'` }
    own.set(local, value)
  }
  const target = nbdTargetFromOptions(own)
  return target.ok ? { ok: true, file: nbdNameOf(target.target) } : target
}

/**
 * The name QEMU shows for an image whose file is an NBD export: its
 * canonical URI (nbd+unix://…, nbd://…); undefined for other names.
 */
export const nbdDisplayName = (name: string, options: BlockOptions | undefined): string | undefined => {
  if (options === undefined) {
    const parsed = parseNbdFilename(name)
    return parsed?.ok === true ? displayNameOf(parsed.target) : undefined
  }
  if (options.get("driver") !== "nbd") return undefined
  const copy: BlockOptions = new Map(options)
  const taken = takeNbdNode(copy, "")
  if (!taken.ok || copy.size > 0) return undefined
  const parsed = parseNbdName(taken.file)
  return parsed?.ok === true ? displayNameOf(parsed.target) : undefined
}

/**
 * What qemu-img info shows differently for an export opened as raw bytes
 * (QEMU's nbd driver answers no get_info, so there is no dirty flag), and
 * for the nbd driver itself at the root (`driver=nbd`: format "nbd").
 * Undefined when `shown` is not an NBD name.
 */
export const nbdInfoOf = (shown: string, options: BlockOptions | undefined): { readonly rootFormat: "nbd" | "raw" } | undefined => {
  if (!/^nbd(\+unix)?:\/\//.test(shown)) return undefined
  return { rootFormat: options?.get("driver") === "nbd" ? "nbd" : "raw" }
}
