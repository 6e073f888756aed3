/**
 * Node kernels on node:crypto (OpenSSL): AES-ECB cipher objects reused for
 * whole runs, `crypto.pbkdf2` on the libuv thread pool, `createHash`,
 * `randomFillSync`. Import from `@qcow2/crypto/node`.
 *
 * node:crypto keeps keys inside OpenSSL (KeyObject and cipher contexts), where
 * JavaScript cannot zero them; `dispose()` drops the references so they are
 * freed with the objects.
 */
import * as nodeCrypto from "node:crypto"
import { Layer } from "effect"
import type { AesEngine, CryptoBackend } from "./backend.js"
import { InvalidCryptoArgument } from "./errors.js"
import { makeSectorCipherFactory, SectorCipherFactory } from "./service.js"

/**
 * Below this many chains per call, CBC encryption makes one node:crypto CBC
 * cipher per chain; above it, chains are interleaved so that block j of every
 * chain goes through one ECB call (CBC is sequential within a chain only).
 */
const CBC_INTERLEAVE_MIN = 8

const nodeAes = (key: Uint8Array): AesEngine => {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
    throw new InvalidCryptoArgument({ reason: `AES key must be 16, 24 or 32 bytes, got ${key.length}` })
  }
  const bits = key.length * 8
  let keyObject: nodeCrypto.KeyObject | undefined = nodeCrypto.createSecretKey(Uint8Array.from(key))
  let enc: nodeCrypto.Cipher | undefined = nodeCrypto.createCipheriv(`aes-${bits}-ecb`, keyObject, null)
  enc.setAutoPadding(false)
  let dec: nodeCrypto.Decipher | undefined = nodeCrypto.createDecipheriv(`aes-${bits}-ecb`, keyObject, null)
  dec.setAutoPadding(false)
  let column = new Uint8Array(0)

  const live = <A>(x: A | undefined): A => {
    if (x === undefined) throw new InvalidCryptoArgument({ reason: "AES engine used after dispose()" })
    return x
  }

  return {
    keyBytes: key.length,
    encryptBlocks: (buf) => {
      buf.set(live(enc).update(buf))
    },
    decryptBlocks: (buf) => {
      buf.set(live(dec).update(buf))
    },
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
      const col = column.subarray(0, count * 16)
      for (let j = 0; j < chainBytes; j += 16) {
        for (let c = 0; c < count; c++) {
          const o = c * chainBytes + j
          const prev = j === 0 ? ivs.subarray(c * 16, c * 16 + 16) : buf.subarray(o - 16, o)
          for (let b = 0; b < 16; b++) col[c * 16 + b] = buf[o + b]! ^ prev[b]!
        }
        const ct = e.update(col)
        for (let c = 0; c < count; c++) buf.set(ct.subarray(c * 16, c * 16 + 16), c * chainBytes + j)
      }
      col.fill(0)
    },
    dispose: () => {
      keyObject = undefined
      enc = undefined
      dec = undefined
      column.fill(0)
    }
  }
}

const toBytes = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)

/** Kernels on node:crypto. */
export const nodeBackend: CryptoBackend = {
  name: "node",
  aes: nodeAes,
  digest: (hash, parts) => {
    const h = nodeCrypto.createHash(hash)
    for (const p of parts) h.update(p)
    return toBytes(h.digest())
  },
  pbkdf2: (hash, password, salt, iterations, length) =>
    new Promise((resolve, reject) =>
      nodeCrypto.pbkdf2(password, salt, iterations, length, hash, (err, key) =>
        err ? reject(err) : resolve(toBytes(key))
      )
    ),
  randomBytes: (length) => {
    const out = new Uint8Array(length)
    nodeCrypto.randomFillSync(out)
    return out
  }
}

/** {@link SectorCipherFactory} on node:crypto kernels. */
export const layerNode: Layer.Layer<SectorCipherFactory> = Layer.succeed(
  SectorCipherFactory,
  makeSectorCipherFactory(nodeBackend)
)
