/**
 * What readv, writev, aio_read and aio_write share: "off len [len..]"
 * operands (qemu-io's create_iovec: one buffer per length, read or written
 * as one request), and pattern verification.
 */
import { print } from "../output.js"
import { parseSizeArgument } from "./args.js"
import { REQUEST_MAX, type RequestRange } from "./request.js"

/** The request "off len [len..]" describes; undefined after printing why not. */
export const parseVectorRange = (operands: ReadonlyArray<string>): RequestRange | undefined => {
  const offset = parseSizeArgument(operands[0]!)
  if (offset === undefined) return undefined
  let count = 0
  for (const text of operands.slice(1)) {
    const length = parseSizeArgument(text)
    if (length === undefined) return undefined
    if (length > REQUEST_MAX) {
      print(`Argument '${text}' exceeds maximum size ${REQUEST_MAX}\n`)
      return undefined
    }
    if (count > REQUEST_MAX - length) {
      print(`The total number of bytes exceed the maximum size ${REQUEST_MAX}\n`)
      return undefined
    }
    count += length
  }
  return { offset, count }
}

/** Whether every byte of `bytes` equals `value`: memcmp against a filled block (a byte loop costs ~2 ns/byte). */
export const allBytesAre = (bytes: Uint8Array, value: number): boolean => {
  const block = new Uint8Array(Math.min(bytes.length, 1 << 16)).fill(value)
  for (let pos = 0; pos < bytes.length; pos += block.length) {
    const n = Math.min(block.length, bytes.length - pos)
    if (Buffer.compare(bytes.subarray(pos, pos + n), block.subarray(0, n)) !== 0) return false
  }
  return true
}

/** Checks the bytes read against `pattern`; false after printing qemu-io's "Pattern verification failed". */
export const verifyPattern = (buf: Uint8Array, pattern: number, offset: number, checkedFrom = 0, checkedLength = buf.length - checkedFrom): boolean => {
  if (allBytesAre(buf.subarray(checkedFrom, checkedFrom + checkedLength), pattern)) return true
  print(`Pattern verification failed at offset ${offset + checkedFrom}, ${checkedLength} bytes\n`)
  return false
}
