/**
 * `create()`: `qemu-img create` for qcow2, raw and raw LUKS volumes, with
 * qemu-img's `-o` options camelCased (`cluster_size` → `clusterSize`,
 * `encrypt.cipher-alg` → `encrypt.cipherAlg`).
 */
import { Effect } from "effect"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { createEffect } from "./internal/create.js"
import type { CreateOptions } from "./options.js"
import { publicErrors, type Runner } from "./runtime.js"

/**
 * Creates an image (replacing an existing one) on `runner`'s platform, as
 * `qemu-img create`: qcow2 unless `format` says "raw" or "luks". `opener`,
 * when given, stores it instead of the platform's opener.
 */
export function createWith(runner: Runner, name: string, options: CreateOptions, opener?: StorageOpenerShape): Promise<void> {
  const effect = createEffect(name, options)
  return runner.run(publicErrors(opener !== undefined ? Effect.provideService(effect, StorageOpener, opener) : effect))
}
