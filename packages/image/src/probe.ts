import { QCOW2_MAGIC } from "@qcow2/format"
import type { ImageFormat } from "./api.js"
import { hasLuksMagic } from "./luks.js"

/** Bytes QEMU's format probe looks at (BLOCK_PROBE_BUF_SIZE). */
export const PROBE_BYTES = 512

/** Bytes `probedFormat` needs: a qcow2 magic and version, or a LUKS magic and version. */
export const PROBE_HEADER_BYTES = 8

const u16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!
const u32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0

/**
 * The format the first bytes of a file name, as QEMU's probes tell them
 * (limited to the formats here): the qcow2 magic with a version (QEMU's
 * qcow driver takes version 1, its qcow2 driver 2 and up; here both are
 * qcow2, and version 1 is then refused), the LUKS magic with version 1,
 * else raw.
 */
export const probedFormat = (first: Uint8Array): ImageFormat => {
  if (first.length >= 8 && u32(first, 0) === QCOW2_MAGIC && u32(first, 4) !== 0) return "qcow2"
  return first.length >= 8 && hasLuksMagic(first) && u16(first, 6) === 1 ? "luks" : "raw"
}
