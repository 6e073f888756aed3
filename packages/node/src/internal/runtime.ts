/**
 * The one runtime of the Promise API: a ManagedRuntime per process holding
 * the Node layers (file and HTTP storage, the node:zlib/zstd codec,
 * node:crypto ciphers), and the step that turns an Effect's failure into
 * one of the public Error classes.
 */
import { Cause, Effect, Exit, Layer, ManagedRuntime, Option } from "effect"
import { ClusterCodec } from "@qcow2/compress"
import { NodeClusterCodec } from "@qcow2/compress/node"
import type { SectorCipherFactory } from "@qcow2/crypto"
import { layerNode } from "@qcow2/crypto/node"
import type { ImageError as EffectImageError } from "@qcow2/image"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { HttpStorageOpener } from "@qcow2/storage-http"
import { nodeStorageOpener } from "@qcow2/storage-node"
import { AbortError, ImageError, NoSpaceError, WrongPassphraseError, type ImageErrorDetails, type Qcow2Error } from "../errors.js"

/** True for the names the HTTP backend opens. */
export const isUrl = (name: string): boolean => /^https?:\/\//i.test(name)

const httpOpener = HttpStorageOpener.make()

/**
 * Files by path through node:fs, http(s) URLs through Range requests (read
 * only). A backing name resolves against the image that names it: against
 * its URL for an image opened by URL, against its directory otherwise.
 */
export const nodeAndHttpOpener: StorageOpenerShape = {
  open: (name, options) => (isUrl(name) ? httpOpener.open(name, options) : nodeStorageOpener.open(name, options)),
  resolve: (from, name) => {
    if (isUrl(name)) return name
    return isUrl(from) ? httpOpener.resolve(from, name) : nodeStorageOpener.resolve(from, name)
  }
}

/** The services every operation of this package uses. */
export type NodeServices = StorageOpener | ClusterCodec | SectorCipherFactory

const services: Layer.Layer<NodeServices> = Layer.mergeAll(Layer.succeed(StorageOpener, nodeAndHttpOpener), NodeClusterCodec.layer, layerNode)

/** Built on first use and kept for the life of the process. */
const runtime = ManagedRuntime.make(services)

/**
 * Runs `effect` to a Promise. A failure rejects with the public error it
 * maps to; an interruption through `signal` rejects with AbortError; a
 * defect rejects with the defect itself (a bug, not an image problem).
 */
export const run = async <A>(effect: Effect.Effect<A, Qcow2Error, NodeServices>, signal?: AbortSignal): Promise<A> => {
  const exit = await runtime.runPromiseExit(effect, signal !== undefined ? { signal } : undefined)
  if (Exit.isSuccess(exit)) return exit.value
  const failure = Cause.findErrorOption(exit.cause)
  if (Option.isSome(failure)) throw failure.value
  if (Cause.hasInterruptsOnly(exit.cause)) throw new AbortError(signal?.aborted === true ? abortMessage(signal) : undefined)
  throw Cause.squash(exit.cause)
}

const abortMessage = (signal: AbortSignal): string | undefined => {
  const reason: unknown = signal.reason
  return reason instanceof Error && reason.name !== "AbortError" ? `The operation was aborted: ${reason.message}` : undefined
}

/** A UTF-8 passphrase as the bytes the key derivation takes (QEMU secrets are bytes). */
export const passphraseBytes = (passphrase: string | Uint8Array): Uint8Array =>
  typeof passphrase === "string" ? new TextEncoder().encode(passphrase) : passphrase

/** Whether a failure (or one of its causes) is LUKS's "no key slot accepted the passphrase". */
const isBadPassphrase = (cause: unknown): boolean => {
  for (let e = cause, depth = 0; typeof e === "object" && e !== null && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const tagged = e as { _tag?: unknown; reason?: unknown }
    if (tagged._tag === "CryptoError" && tagged.reason === "BadPassphrase") return true
  }
  return false
}

/** The public error for an Effect API ImageError (class picked by reason, errno and cause). */
export const fromImageError = (e: EffectImageError): ImageError => {
  const details: ImageErrorDetails = {
    reason: e.reason,
    ...(e.location !== undefined ? { location: e.location } : {}),
    ...(e.offset !== undefined ? { offset: e.offset } : {}),
    ...(e.errno !== undefined ? { errno: e.errno } : {}),
    cause: e
  }
  if (e.reason === "Encryption" && isBadPassphrase(e.cause)) return new WrongPassphraseError(e.message, details)
  if (e.reason === "NoSpace" || e.errno === "ENOSPC") return new NoSpaceError(e.message, details)
  return new ImageError(e.message, details)
}

/** Presents the Effect API's ImageError as the public one. */
export const publicErrors = <A, R>(effect: Effect.Effect<A, EffectImageError, R>): Effect.Effect<A, Qcow2Error, R> =>
  Effect.mapError(effect, fromImageError)
