/**
 * Node kernels on node:crypto (OpenSSL): AES-ECB cipher objects reused for
 * whole runs, PBKDF2 from libnettle where it can be had (nettle.ts) and
 * `crypto.pbkdf2` on the libuv thread pool otherwise, `createHash`,
 * `randomFillSync`. Import from `@qcow2/crypto/node`.
 *
 * node:crypto keeps keys inside OpenSSL (KeyObject and cipher contexts), where
 * JavaScript cannot zero them; `dispose()` drops the references so they are
 * freed with the objects.
 */
import * as nodeCrypto from "node:crypto"
import { Layer } from "effect"
import type { AesEngine, CryptoBackend } from "./backend.js"
import { invalidArgument } from "./errors.js"
import { nettlePbkdf2 } from "./nettle.js"
import { makeSectorCipherFactory, SectorCipherFactory } from "./service.js"

/**
 * Below this many chains per call, CBC encryption makes one node:crypto CBC
 * cipher per chain; above it, chains are interleaved so that block j of every
 * chain goes through one ECB call (CBC is sequential within a chain only).
 */
const CBC_INTERLEAVE_MIN = 12

const toBytes = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

const nodeAes = (key: Uint8Array): AesEngine => {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
    throw invalidArgument(`AES key must be 16, 24 or 32 bytes, got ${key.length}`)
  }
  const bits = key.length * 8
  let keyObject: nodeCrypto.KeyObject | undefined = nodeCrypto.createSecretKey(Uint8Array.from(key))
  let enc: nodeCrypto.Cipher | undefined = nodeCrypto.createCipheriv(`aes-${bits}-ecb`, keyObject, null)
  enc.setAutoPadding(false)
  let dec: nodeCrypto.Decipher | undefined = nodeCrypto.createDecipheriv(`aes-${bits}-ecb`, keyObject, null)
  dec.setAutoPadding(false)
  let column = new Uint8Array(0)

  const live = <A>(x: A | undefined): A => {
    if (x === undefined) throw invalidArgument("AES engine used after dispose()")
    return x
  }

  return {
    keyBytes: key.length,
    encryptBlocks: (buf) => toBytes(live(enc).update(buf)),
    decryptBlocks: (buf) => toBytes(live(dec).update(buf)),
    cbcEncryptChains: (ivs, buf, chainBytes, count) => {
      const k = live(keyObject)
      if (count < CBC_INTERLEAVE_MIN) {
        for (let c = 0; c < count; c++) {
          const cbc = nodeCrypto.createCipheriv(`aes-${bits}-cbc`, k, ivs.subarray(c * 16, c * 16 + 16))
          cbc.setAutoPadding(false)
          const chain = buf.subarray(c * chainBytes, (c + 1) * chainBytes)
          chain.set(cbc.update(chain))
        }
        return
      }
      const e = live(enc)
      if (column.length < count * 16) column = new Uint8Array(count * 16)
      const col = new Uint32Array(column.buffer, 0, count * 4)
      const w = new Uint32Array(buf.buffer, buf.byteOffset, (count * chainBytes) >>> 2)
      const iv = new Uint32Array(ivs.buffer, ivs.byteOffset, count * 4)
      const chainWords = chainBytes >>> 2
      // Column j holds block j of every chain XORed with block j-1's ciphertext (or the IV).
      for (let j = 0; j < chainWords; j += 4) {
        for (let c = 0; c < count; c++) {
          const o = c * chainWords + j
          const p = j === 0 ? iv : w
          const q = j === 0 ? c * 4 : o - 4
          col[c * 4] = w[o]! ^ p[q]!
          col[c * 4 + 1] = w[o + 1]! ^ p[q + 1]!
          col[c * 4 + 2] = w[o + 2]! ^ p[q + 2]!
          col[c * 4 + 3] = w[o + 3]! ^ p[q + 3]!
        }
        const ct = e.update(column.subarray(0, count * 16))
        const ctw =
          (ct.byteOffset & 3) === 0 ? new Uint32Array(ct.buffer, ct.byteOffset, count * 4) : new Uint32Array(Uint8Array.from(ct).buffer)
        for (let c = 0; c < count; c++) {
          const o = c * chainWords + j
          w[o] = ctw[c * 4]!
          w[o + 1] = ctw[c * 4 + 1]!
          w[o + 2] = ctw[c * 4 + 2]!
          w[o + 3] = ctw[c * 4 + 3]!
        }
      }
      column.fill(0)
    },
    dispose: () => {
      keyObject = undefined
      enc = undefined
      dec = undefined
      column.fill(0)
    }
  }
}

/** Kernels on node:crypto. */
export const nodeBackend: CryptoBackend = {
  name: "node",
  aes: nodeAes,
  digest: (hash, parts) => {
    const h = nodeCrypto.createHash(hash)
    for (const p of parts) h.update(p)
    return toBytes(h.digest())
  },
  // libnettle's when it can be had (nettle.ts: about twice as fast), else OpenSSL's on the libuv thread pool.
  pbkdf2: async (hash, password, salt, iterations, length) =>
    (await (await nettlePbkdf2())?.(hash, password, salt, iterations, length)) ??
    new Promise((resolve, reject) =>
      nodeCrypto.pbkdf2(password, salt, iterations, length, hash, (err, key) =>
        err ? reject(err) : resolve(toBytes(key))
      )
    ),
  randomBytes: (length) => {
    const out = new Uint8Array(length)
    nodeCrypto.randomFillSync(out)
    return out
  },
  // User + system time of the whole process; crypto.pbkdf2 runs on a libuv
  // worker thread, which this includes.
  cpuTimeMs: () => {
    const u = process.cpuUsage()
    return (u.user + u.system) / 1000
  }
}

/** {@link SectorCipherFactory} on node:crypto kernels. */
export const layerNode: Layer.Layer<SectorCipherFactory> = Layer.succeed(
  SectorCipherFactory,
  makeSectorCipherFactory(nodeBackend)
)
