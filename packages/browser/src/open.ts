/**
 * `open()` and `create()` of the browser Promise API. A name is an http(s)
 * URL (read only), an IndexedDB image `idb://DATABASE/NAME`, or a `File` /
 * `Blob` the user picked (read only). What an image may open besides itself
 * (its backing chain, an external data file) is decided by an
 * {@link OpenPolicy}: by default the same origin, the same database or the
 * same set of picked files, plus the names in `allow`.
 */
import { createWith, openWith, type CreateOptions, type OpenOptions, type QcowImage } from "@qcow2/promise"
import type { StorageOpenerShape } from "@qcow2/storage"
import { makeAppOpener, OpenPolicy, PICKED } from "./opener.js"
import { runner } from "./platform.js"

/** How a call reaches names other than the one it opens. */
export interface PolicyOptions {
  /**
   * The policy to check names against (e.g. one the app keeps for the
   * session, with what the user approved). Default: a fresh policy.
   */
  readonly policy?: OpenPolicy
  /** Names the user approved besides the one opened (a backing URL on another origin, another stored image). */
  readonly allow?: ReadonlyArray<string>
  /** Other picked files the image may name as its backing chain, by file name. */
  readonly files?: ReadonlyArray<File> | ReadonlyMap<string, Blob>
}

export interface BrowserOpenOptions extends OpenOptions, PolicyOptions {}

/** A picked file or Blob, opened by its name (`name` of a File, else "blob"). */
const blobName = (blob: Blob): string => (typeof File === "function" && blob instanceof File ? blob.name : "blob")

/** The name a source opens by, and the opener of the call behind the policy. */
export const callOpener = (source: string | Blob, options: PolicyOptions): { readonly name: string; readonly opener: StorageOpenerShape } => {
  const picked = new Map<string, Blob>()
  const files = options.files
  if (files !== undefined) {
    if (files instanceof Map) for (const [n, b] of files) picked.set(n, b)
    else for (const f of files as ReadonlyArray<File>) picked.set(f.name, f)
  }
  let name: string
  if (typeof source === "string") {
    name = source
  } else {
    picked.set(blobName(source), source)
    name = `${PICKED}${blobName(source)}`
  }
  const policy = options.policy ?? new OpenPolicy()
  policy.approve(name)
  for (const allowed of options.allow ?? []) policy.approve(allowed)
  return { name, opener: makeAppOpener({ picked, policy }) }
}

/**
 * Opens an image from a URL, an `idb://DATABASE/NAME` store or a picked
 * File/Blob, probing qcow2, LUKS and raw unless `format` says, with its
 * backing chain as the policy allows. Only IndexedDB images open writable
 * (by default); URLs and Blobs are read only.
 */
export function open(source: string | Blob, options: BrowserOpenOptions = {}): Promise<QcowImage> {
  const { name, opener } = callOpener(source, options)
  return openWith(runner, name, typeof source === "string" ? options : { ...options, readOnly: true }, opener)
}

/**
 * Creates an image in IndexedDB (`idb://DATABASE/NAME`, replacing an
 * existing one), as `qemu-img create`. An overlay names its backing image
 * in `backingFile` (a URL, another `idb://` image, or a name relative to
 * this one); naming it approves it for this call, and `allow` / `policy`
 * let later opens reach it.
 */
export function create(name: string, options: CreateOptions & PolicyOptions): Promise<void> {
  const backing = "backingFile" in options ? options.backingFile : undefined
  // The caller named the backing image: as good as the user approving it.
  const allow = backing !== undefined && backing !== "" ? [...(options.allow ?? []), callOpener(name, options).opener.resolve(name, backing)] : options.allow
  const { opener } = callOpener(name, { ...options, ...(allow !== undefined ? { allow } : {}) })
  return createWith(runner, name, options, opener)
}
