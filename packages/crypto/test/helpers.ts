import * as nodeCrypto from "node:crypto"
import { expect } from "vitest"
import type { CryptoBackend, CryptoErrorReason } from "../src/index.js"
import { CryptoError, portableBackend } from "../src/index.js"
import { nodeBackend } from "../src/node.js"

export const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"))
export const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex")

export const backends: ReadonlyArray<CryptoBackend> = [nodeBackend, portableBackend]

/** plain64 IV: little-endian 64-bit sector number, zero-padded to 16 bytes. */
export const plain64Iv = (sector: number): Buffer => {
  const iv = Buffer.alloc(16)
  iv.writeBigUInt64LE(BigInt(sector))
  return iv
}

/**
 * Independent reference: encrypt or decrypt sector by sector with a fresh
 * node:crypto cipher per sector and the given IV function.
 */
export const referenceSectors = (
  algorithm: string,
  key: Uint8Array,
  ivOf: (sector: number) => Buffer,
  first: number,
  data: Uint8Array,
  encrypt: boolean
): Uint8Array => {
  const out = new Uint8Array(data.length)
  for (let i = 0; i < data.length / 512; i++) {
    const iv = ivOf(first + i)
    const c = encrypt
      ? nodeCrypto.createCipheriv(algorithm, key, algorithm.endsWith("ecb") ? null : iv)
      : nodeCrypto.createDecipheriv(algorithm, key, algorithm.endsWith("ecb") ? null : iv)
    c.setAutoPadding(false)
    out.set(Buffer.concat([c.update(data.subarray(i * 512, i * 512 + 512)), c.final()]), i * 512)
  }
  return out
}

export const randomBytes = (n: number): Uint8Array => Uint8Array.from(nodeCrypto.randomBytes(n))

/** Fast byte equality for big arrays (vitest's deep equality walks element by element). */
export const expectBytes = (actual: Uint8Array, expected: Uint8Array): void => {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength)
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength)
  if (!a.equals(b)) {
    let i = 0
    while (i < a.length && a[i] === b[i]) i++
    throw new Error(`byte arrays differ (lengths ${a.length}/${b.length}) first at ${i}`)
  }
}

/** Asserts that `error` is a CryptoError of `reason` whose message matches `message` (when given). */
export const expectCryptoError = (error: unknown, reason: CryptoErrorReason, message?: RegExp): CryptoError => {
  expect(error).toBeInstanceOf(CryptoError)
  const e = error as CryptoError
  expect(e.reason).toBe(reason)
  if (message !== undefined) expect(e.message).toMatch(message)
  return e
}

/** Asserts that `f` throws a CryptoError of `reason`. */
export const expectThrowsCryptoError = (f: () => unknown, reason: CryptoErrorReason, message?: RegExp): CryptoError => {
  let thrown: unknown = undefined
  try {
    f()
  } catch (e) {
    thrown = e
  }
  return expectCryptoError(thrown, reason, message)
}
