/**
 * What a runtime package (@qcow2/node, @qcow2/browser) supplies to the
 * Promise API, and the runner built from it: a ManagedRuntime holding the
 * runtime's layers (its storage opener, and the codec and ciphers that
 * `@qcow2/compress/runtime` / `@qcow2/crypto/runtime` resolve to under its
 * export conditions), and the step that turns an Effect's failure into one
 * of the public Error classes.
 */
import { Cause, Effect, Exit, Layer, ManagedRuntime, Option } from "effect"
import type { ClusterCodec } from "@qcow2/compress"
import { runtimeClusterCodecLayer } from "@qcow2/compress/runtime"
import type { SectorCipherFactory } from "@qcow2/crypto"
import { runtimeCryptoLayer } from "@qcow2/crypto/runtime"
import type { ImageError as EffectImageError } from "@qcow2/image"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { AbortError, ImageError, NoSpaceError, WrongPassphraseError, type ImageErrorDetails, type Qcow2Error } from "./errors.js"

/** The services every operation of the Promise API uses. */
export type PromiseServices = StorageOpener | ClusterCodec | SectorCipherFactory

/** The runtime-specific parts of the Promise API. */
export interface Platform {
  /** Opens every name the runtime knows (files, URLs, stored images) and resolves backing names. */
  readonly opener: StorageOpenerShape
  /** Whether `name` opens read-only when `open` is not told (URLs, picked files). */
  readonly readOnlyByDefault: (name: string) => boolean
  /** Bytes a stored image really occupies (qemu-img info's `actual-size`), where the runtime can tell. */
  readonly allocatedBytes: (location: string) => Promise<number | undefined>
  /** Why `name` cannot be written as a convert target, or `undefined` when it can. */
  readonly targetProblem: (name: string) => string | undefined
}

/** Runs Effects of the Promise API on one platform's runtime. */
export interface Runner {
  readonly platform: Platform
  /**
   * Runs `effect` to a Promise. A failure rejects with the public error it
   * maps to; an interruption through `signal` rejects with AbortError; a
   * defect rejects with the defect itself (a bug, not an image problem).
   */
  readonly run: <A>(effect: Effect.Effect<A, Qcow2Error, PromiseServices>, signal?: AbortSignal) => Promise<A>
}

/** A runner whose runtime (built on first use, kept for the life of the realm) holds `platform`'s services. */
export const makeRunner = (platform: Platform): Runner => {
  const services: Layer.Layer<PromiseServices> = Layer.mergeAll(Layer.succeed(StorageOpener, platform.opener), runtimeClusterCodecLayer, runtimeCryptoLayer)
  const runtime = ManagedRuntime.make(services)
  const run = async <A>(effect: Effect.Effect<A, Qcow2Error, PromiseServices>, signal?: AbortSignal): Promise<A> => {
    const exit = await runtime.runPromiseExit(effect, signal !== undefined ? { signal } : undefined)
    if (Exit.isSuccess(exit)) return exit.value
    const failure = Cause.findErrorOption(exit.cause)
    if (Option.isSome(failure)) throw failure.value
    if (Cause.hasInterruptsOnly(exit.cause)) throw new AbortError(signal?.aborted === true ? abortMessage(signal) : undefined)
    throw Cause.squash(exit.cause)
  }
  return { platform, run }
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
