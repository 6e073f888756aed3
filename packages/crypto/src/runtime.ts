/**
 * `@qcow2/crypto/runtime` under Node (the `default` export condition): the
 * cipher backend that runs best here, node:crypto. Under the `browser`
 * condition the same path resolves to runtime.browser.ts (the portable
 * noble backend), with the same exports and types.
 */
import type { Layer } from "effect"
import type { CryptoBackend } from "./backend.js"
import { layerNode, nodeBackend } from "./node.js"
import type { SectorCipherFactory } from "./service.js"

/** This runtime's cipher backend (here node:crypto). */
export const runtimeBackend: CryptoBackend = nodeBackend

/** Provides SectorCipherFactory on this runtime's backend (here node:crypto). */
export const runtimeCryptoLayer: Layer.Layer<SectorCipherFactory> = layerNode
