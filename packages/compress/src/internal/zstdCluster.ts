import { CompressionType } from "../CompressionType.js"
import { DecompressionError } from "../errors.js"
import { hasZstdMagic, walkZstdFrame } from "../ZstdFrame.js"
import type { ZstdKernel } from "./zstdKernel.js"

/** Names of the zstd error codes a decoder can report (zstd_errors.h). */
const zstdErrorNames: Record<number, string> = {
  1: "generic",
  10: "prefix_unknown",
  12: "version_unsupported",
  14: "frameParameter_unsupported",
  16: "frameParameter_windowTooLarge",
  20: "corruption_detected",
  22: "checksum_wrong",
  24: "literals_headerWrong",
  32: "dictionary_corrupted",
  34: "dictionary_wrong",
  64: "memory_allocation",
  70: "dstSize_tooSmall",
  72: "srcSize_wrong"
}

const corrupt = (message: string, cause?: unknown) =>
  new DecompressionError({ compressionType: CompressionType.Zstd, reason: "Corrupt", message, cause })

/**
 * Fills `out` from zstd frames at the start of `input` (QEMU's
 * qcow2_zstd_decompress semantics): frames are decoded in order until the
 * cluster is full, skippable frames are skipped, bytes after the frame that
 * fills the cluster are ignored (padding or the next cluster). A frame that
 * would overflow the cluster is corrupt, as in QEMU.
 */
export const decompressZstdCluster = (kernel: ZstdKernel, input: Uint8Array, out: Uint8Array): void => {
  let produced = 0
  let offset = 0
  while (produced < out.length) {
    if (offset >= input.length) {
      throw new DecompressionError({
        compressionType: CompressionType.Zstd,
        reason: "ShortOutput",
        message: `zstd data ends after ${produced} of ${out.length} bytes`
      })
    }
    if (produced > 0 && !hasZstdMagic(input, offset)) {
      throw new DecompressionError({
        compressionType: CompressionType.Zstd,
        reason: "ShortOutput",
        message: `zstd data ends after ${produced} of ${out.length} bytes (no frame at ${offset})`
      })
    }
    const frame = walkZstdFrame(input, offset)
    if (frame.kind === "skippable") {
      offset += frame.length
      continue
    }
    if (frame.kind !== "frame") {
      if (frame.kind === "invalid") throw corrupt(frame.message)
      throw new DecompressionError({
        compressionType: CompressionType.Zstd,
        reason: "ShortOutput",
        message: `${frame.message}; input ends after ${produced} of ${out.length} bytes`
      })
    }
    if (frame.dictionaryId !== 0) {
      throw new DecompressionError({
        compressionType: CompressionType.Zstd,
        reason: "Unsupported",
        message: `zstd frame at ${offset} needs dictionary ${frame.dictionaryId}`
      })
    }
    const room = out.length - produced
    if (frame.contentSize !== undefined && frame.contentSize > room) {
      throw corrupt(`zstd frame at ${offset} holds ${frame.contentSize} bytes but only ${room} fit in the cluster`)
    }
    const n = kernel.decompressFrame(input.subarray(offset, offset + frame.length), out.subarray(produced))
    if (n < 0) {
      const name = zstdErrorNames[-n] ?? `error ${-n}`
      throw corrupt(
        -n === 70
          ? `zstd frame at ${offset} holds more than the ${room} bytes left in the cluster`
          : `zstd frame at ${offset} failed to decode (${name})`
      )
    }
    produced += n
    offset += frame.length
  }
}
