/**
 * `create()`: `qemu-img create` for qcow2, raw and raw LUKS volumes, with
 * qemu-img's `-o` options camelCased (`cluster_size` → `clusterSize`,
 * `encrypt.cipher-alg` → `encrypt.cipherAlg`).
 */
import { createWith, type CreateOptions } from "@qcow2/promise"
import { runner } from "./internal/runtime.js"

/**
 * Creates an image file (replacing an existing one), as `qemu-img create`:
 * qcow2 unless `format` says "raw" or "luks".
 */
export function create(path: string, options: CreateOptions): Promise<void> {
  return createWith(runner, path, options)
}
