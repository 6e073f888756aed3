/**
 * The Node platform of the Promise API: files by path through node:fs,
 * http(s) URLs through Range requests (read only) and NBD exports through
 * the NBD client (`@qcow2/nbd`, loaded with the first NBD name); the codec, ciphers and
 * compression pool are the Node ones `@qcow2/compress/runtime` and
 * `@qcow2/crypto/runtime` resolve to here (node:zlib, node:crypto, worker
 * threads). One runner per process.
 */
import * as fs from "node:fs/promises"
import { makeRunner, type Platform } from "@qcow2/promise"
import { Effect } from "effect"
import { parseNbdName } from "@qcow2/nbd/client"
import type { StorageOpenerShape } from "@qcow2/storage"
import { HttpStorageOpener } from "@qcow2/storage-http"
import { nodeStorageOpener } from "@qcow2/storage-node"

export { fromImageError } from "@qcow2/promise"

/** True for the names the HTTP backend opens. */
export const isUrl = (name: string): boolean => /^https?:\/\//i.test(name)

const httpOpener = HttpStorageOpener.make()

/** True for the names the NBD client opens (`nbd:…`, `nbd://…`, `nbd+unix://…`, `json:{"driver":"nbd",…}`). */
export const isNbdName = (name: string): boolean => parseNbdName(name) !== undefined

let nbdModule: Promise<StorageOpenerShape> | undefined
/** The NBD client's opener (node:net), loaded with the first NBD name. */
const nbdOpener = Effect.promise(() => (nbdModule ??= import("@qcow2/nbd/node").then((m) => m.makeNbdStorageOpener())))

/**
 * Files by path through node:fs, http(s) URLs through Range requests (read
 * only), NBD names through the NBD client (one connection per open, as
 * QEMU's nbd driver). A backing name resolves against the image that names
 * it: against its URL for an image opened by URL, against its directory
 * otherwise; an NBD name stands for itself.
 */
export const nodeAndHttpOpener: StorageOpenerShape = {
  open: (name, options) => {
    if (isNbdName(name)) return Effect.flatMap(nbdOpener, (nbd) => nbd.open(name, options))
    return isUrl(name) ? httpOpener.open(name, options) : nodeStorageOpener.open(name, options)
  },
  resolve: (from, name) => {
    if (isUrl(name) || isNbdName(name)) return name
    return isUrl(from) ? httpOpener.resolve(from, name) : nodeStorageOpener.resolve(from, name)
  }
}

/** Allocated bytes of a local file (st_blocks * 512), as qemu-img info's "actual-size". */
const allocatedBytes = async (location: string): Promise<number | undefined> => {
  if (isUrl(location) || isNbdName(location)) return undefined
  try {
    return (await fs.stat(location)).blocks * 512
  } catch {
    return undefined
  }
}

export const nodePlatform: Platform = {
  opener: nodeAndHttpOpener,
  readOnlyByDefault: isUrl,
  allocatedBytes,
  targetProblem: (name) => (isUrl(name) || isNbdName(name) ? "the target must be a local file" : undefined)
}

/** The process's runner, built on first use. */
export const runner = makeRunner(nodePlatform)
