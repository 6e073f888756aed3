import type { LockPermission, LockRequest } from "@qcow2/storage"

/** What a file is to the image that opens it; QEMU's graph gives each its own permissions. */
export type FileRole = "qcow2" | "raw" | "data-file" | "create"

/**
 * The locks QEMU 7.2 holds on a file in each role, as qemu-img and qemu-io
 * take them (read off /proc/locks and strace of qemu-io/qemu-img on qcow2,
 * raw, backing and data files):
 *
 * | role | read-only | read-write | unshared (no `-U`) |
 * | --- | --- | --- | --- |
 * | qcow2 image or backing file | consistent read | + write, resize | write, resize |
 * | raw image or backing file | consistent read | + write | — |
 * | external data file | consistent read | + write, resize | resize |
 * | file being created | — | write, resize | resize |
 *
 * `forceShare` (`-U`, force-share=on) shares everything; only read-only
 * opens may ask for it (see {@link FORCE_SHARE_READ_ONLY}).
 */
export const lockRequest = (role: FileRole, readOnly: boolean, forceShare: boolean): LockRequest => {
  const use: Array<LockPermission> = role === "create" ? [] : ["consistent read"]
  if (!readOnly) use.push(...(role === "raw" ? (["write"] as const) : (["write", "resize"] as const)))
  const unshared: ReadonlyArray<LockPermission> = forceShare
    ? []
    : role === "qcow2"
      ? ["write", "resize"]
      : role === "raw"
        ? []
        : ["resize"]
  return { use, unshared }
}

/** QEMU's refusal of `-U` on a read-write open (block.c, bdrv_open_common). */
export const FORCE_SHARE_READ_ONLY = "force-share=on can only be used with read-only images"
