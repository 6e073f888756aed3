/**
 * `@qcow2/crypto/runtime` under the `browser` export condition: the
 * portable backend (@noble/ciphers, @noble/hashes). Same exports and types
 * as runtime.ts (the Node entry); imports nothing from `node:*`.
 */
import type * as NodeRuntime from "./runtime.js"
import { portableBackend } from "./portable.js"
import { layerPortable } from "./service.js"

/** This runtime's cipher backend (here the portable one). */
export const runtimeBackend: typeof NodeRuntime.runtimeBackend = portableBackend

/** Provides SectorCipherFactory on this runtime's backend (here the portable one). */
export const runtimeCryptoLayer: typeof NodeRuntime.runtimeCryptoLayer = layerPortable
