import {
  Z_BUF_ERROR,
  Z_DEFAULT_STRATEGY,
  Z_FINISH,
  Z_OK,
  Z_STREAM_END,
  ZStream,
  zlibDeflate,
  zlibDeflateEnd,
  zlibDeflateInit2,
  zlibDeflateReset,
  zlibInflate,
  zlibInflateInit2,
  zlibInflateReset
} from "pako"
import { CompressionType } from "../CompressionType.js"
import { CompressionError, DecompressionError } from "../errors.js"
import type { DeflateKernels } from "./codec.js"

/** zlib's Z_DEFLATED method id. */
const Z_DEFLATED = 8
/** Window used to write: 2^12 = 4 KiB, raw (negative = no zlib header), as QEMU. */
const DEFLATE_WRITE_WINDOW_BITS = 12
/** Window used to read: 2^15 accepts any raw stream (QEMU 7.2 also decodes window-15 streams). */
export const DEFLATE_READ_WINDOW_BITS = 15
const DEFLATE_MEM_LEVEL = 9

/**
 * Inflate with pako's zlib port, QEMU's way (block/qcow2-threads.c,
 * qcow2_zlib_decompress): one inflate call with Z_FINISH straight into the
 * caller's cluster; success when the cluster is full, whether the stream
 * ended (Z_STREAM_END) or still had data (Z_BUF_ERROR). Output never exceeds
 * the cluster, whatever the input claims.
 */
export const makePortableInflate = (): ((input: Uint8Array, out: Uint8Array) => void) => {
  const strm = new ZStream()
  const init = zlibInflateInit2(strm, -DEFLATE_READ_WINDOW_BITS)
  if (init !== Z_OK) throw new Error(`pako inflateInit2 failed (${init})`)
  return (input, out) => {
    zlibInflateReset(strm)
    strm.input = input
    strm.next_in = 0
    strm.avail_in = input.length
    strm.output = out as Uint8Array<ArrayBuffer>
    strm.next_out = 0
    strm.avail_out = out.length
    const ret = zlibInflate(strm, Z_FINISH)
    const left = strm.avail_out
    const message = strm.msg
    strm.input = EMPTY
    strm.output = EMPTY
    if (left === 0 && (ret === Z_STREAM_END || ret === Z_BUF_ERROR || ret === Z_OK)) return
    if (ret === Z_STREAM_END || ret === Z_BUF_ERROR || ret === Z_OK) {
      throw new DecompressionError({
        compressionType: CompressionType.Deflate,
        reason: "ShortOutput",
        message:
          ret === Z_STREAM_END
            ? `deflate stream ends after ${out.length - left} of ${out.length} bytes`
            : `deflate data runs out after ${out.length - left} of ${out.length} bytes`
      })
    }
    throw new DecompressionError({
      compressionType: CompressionType.Deflate,
      reason: "Corrupt",
      message: `invalid deflate data: ${message || `zlib status ${ret}`}`
    })
  }
}

const EMPTY = new Uint8Array(0)

/**
 * Deflate with pako's zlib port, QEMU's way (qcow2_zlib_compress): raw
 * deflate, window 2^12, memLevel 9, with Z_FINISH into a buffer of
 * `input.length - 1` bytes; `undefined` unless that returns Z_STREAM_END
 * (QEMU then writes the cluster uncompressed). Like zlib, pako returns
 * Z_STREAM_END only with at least one byte to spare, so accepted streams are
 * at most cluster_size - 2 bytes.
 */
const makePortableDeflate = (): ((input: Uint8Array, level: number) => Uint8Array | undefined) => {
  let strm: ZStream | undefined
  let streamLevel = Number.NaN
  let scratch = new Uint8Array(0)
  return (input, level) => {
    if (strm === undefined || streamLevel !== level) {
      if (strm !== undefined) zlibDeflateEnd(strm)
      strm = undefined
      const fresh = new ZStream()
      const init = zlibDeflateInit2(fresh, level, Z_DEFLATED, -DEFLATE_WRITE_WINDOW_BITS, DEFLATE_MEM_LEVEL, Z_DEFAULT_STRATEGY)
      if (init !== Z_OK) {
        throw new CompressionError({
          compressionType: CompressionType.Deflate,
          reason: "Failed",
          message: `pako deflateInit2 failed (${init})`
        })
      }
      strm = fresh
      streamLevel = level
    } else {
      zlibDeflateReset(strm)
    }
    const capacity = input.length - 1
    if (scratch.length < capacity) scratch = new Uint8Array(capacity)
    strm.input = input
    strm.next_in = 0
    strm.avail_in = input.length
    strm.output = scratch
    strm.next_out = 0
    strm.avail_out = capacity
    const ret = zlibDeflate(strm, Z_FINISH)
    const written = strm.next_out
    strm.input = EMPTY
    if (ret === Z_STREAM_END) return scratch.slice(0, written)
    if (ret === Z_OK || ret === Z_BUF_ERROR) return undefined
    throw new CompressionError({
      compressionType: CompressionType.Deflate,
      reason: "Failed",
      message: `deflate failed: ${strm.msg || `zlib status ${ret}`}`
    })
  }
}

/** Deflate kernels of PortableClusterCodec: pako both ways. */
export const portableDeflateKernels = (): DeflateKernels => ({
  inflate: makePortableInflate(),
  deflate: makePortableDeflate()
})
