/**
 * Portable kernels: AES from @noble/ciphers (its table-based block primitives,
 * `unsafe.encrypt` / `unsafe.decrypt` on little-endian 32-bit words), hashes
 * and PBKDF2 from @noble/hashes, randomness from `crypto.getRandomValues`.
 * Runs anywhere JavaScript runs (browsers, workers, Node, Deno, Bun).
 */
import { unsafe } from "@noble/ciphers/aes.js"
import { md5, ripemd160, sha1 } from "@noble/hashes/legacy.js"
import { pbkdf2Async } from "@noble/hashes/pbkdf2.js"
import { sha224, sha256, sha384, sha512 } from "@noble/hashes/sha2.js"
import { randomBytes } from "@noble/hashes/utils.js"
import type { AesEngine, CryptoBackend } from "./backend.js"
import { invalidArgument } from "./errors.js"
import type { HashName } from "./spec.js"

const isLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1
const bswap32 = (x: number): number =>
  ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)

const HASHES = { md5, sha1, sha224, sha256, sha384, sha512, ripemd160 } as const

const checkAesKey = (key: Uint8Array): void => {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
    throw invalidArgument(`AES key must be 16, 24 or 32 bytes, got ${key.length}`)
  }
}

/** Word view of an aligned scratch buffer (see AesEngine contract). */
const words = (buf: Uint8Array): Uint32Array => new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2)

const portableAes = (key: Uint8Array): AesEngine => {
  checkAesKey(key)
  const copy = Uint8Array.from(key)
  const xk = unsafe.expandKeyLE(copy)
  const xkd = unsafe.expandKeyDecLE(copy)
  copy.fill(0)
  const { encrypt, decrypt } = unsafe

  const ecb = (buf: Uint8Array, enc: boolean): Uint8Array => {
    const w = words(buf)
    if (!isLE) for (let i = 0; i < w.length; i++) w[i] = bswap32(w[i]!)
    for (let i = 0; i < w.length; i += 4) {
      const r = enc ? encrypt(xk, w[i]!, w[i + 1]!, w[i + 2]!, w[i + 3]!) : decrypt(xkd, w[i]!, w[i + 1]!, w[i + 2]!, w[i + 3]!)
      w[i] = r.s0
      w[i + 1] = r.s1
      w[i + 2] = r.s2
      w[i + 3] = r.s3
    }
    if (!isLE) for (let i = 0; i < w.length; i++) w[i] = bswap32(w[i]!)
    return buf
  }

  return {
    keyBytes: key.length,
    encryptBlocks: (buf) => ecb(buf, true),
    decryptBlocks: (buf) => ecb(buf, false),
    cbcEncryptChains: (ivs, buf, chainBytes, count) => {
      const w = words(buf)
      const iv = words(ivs)
      const sw = isLE ? (x: number) => x : bswap32
      const chainWords = chainBytes >>> 2
      for (let c = 0; c < count; c++) {
        let s0 = sw(iv[c * 4]!)
        let s1 = sw(iv[c * 4 + 1]!)
        let s2 = sw(iv[c * 4 + 2]!)
        let s3 = sw(iv[c * 4 + 3]!)
        const end = (c + 1) * chainWords
        for (let i = c * chainWords; i < end; i += 4) {
          const r = encrypt(xk, s0 ^ sw(w[i]!), s1 ^ sw(w[i + 1]!), s2 ^ sw(w[i + 2]!), s3 ^ sw(w[i + 3]!))
          s0 = r.s0
          s1 = r.s1
          s2 = r.s2
          s3 = r.s3
          w[i] = sw(s0)
          w[i + 1] = sw(s1)
          w[i + 2] = sw(s2)
          w[i + 3] = sw(s3)
        }
      }
    },
    dispose: () => {
      xk.fill(0)
      xkd.fill(0)
    }
  }
}

/** Kernels on @noble/ciphers 2.4 and @noble/hashes 2.4; no platform APIs besides getRandomValues. */
export const portableBackend: CryptoBackend = {
  name: "portable",
  aes: portableAes,
  digest: (hash: HashName, parts) => {
    const h = HASHES[hash].create()
    for (const p of parts) h.update(p)
    return h.digest()
  },
  pbkdf2: (hash, password, salt, iterations, length) =>
    pbkdf2Async(HASHES[hash], password, salt, { c: iterations, dkLen: length }),
  randomBytes: (length) => {
    // getRandomValues (and noble's wrapper) accept at most 65536 bytes per call.
    const out = new Uint8Array(length)
    for (let off = 0; off < length; off += 65536) {
      const n = Math.min(65536, length - off)
      const chunk = randomBytes(n)
      out.set(chunk, off)
      chunk.fill(0)
    }
    return out
  }
}
