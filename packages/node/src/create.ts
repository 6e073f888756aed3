/**
 * `create()`: `qemu-img create` for qcow2, raw and raw LUKS volumes, with
 * qemu-img's `-o` options camelCased (`cluster_size` → `clusterSize`,
 * `encrypt.cipher-alg` → `encrypt.cipherAlg`).
 */
import { createEffect } from "./internal/create.js"
import { publicErrors, run } from "./internal/runtime.js"
import type { CreateOptions } from "./options.js"

/**
 * Creates an image file (replacing an existing one), as `qemu-img create`:
 * qcow2 unless `format` says "raw" or "luks".
 */
export function create(path: string, options: CreateOptions): Promise<void> {
  return run(publicErrors(createEffect(path, options)))
}
