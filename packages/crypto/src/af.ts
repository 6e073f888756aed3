/**
 * Anti-forensic information splitter (LUKS1 spec §2.2, "AF-Splitter";
 * Clemens Fruhwirth, "TKS1", 2004). A key of `n` bytes is stored as
 * `stripes` blocks of `n` bytes; all of them are needed to recover it.
 */
import type { HashName } from "./spec.js"
import { HASH_DIGEST_LENGTH } from "./spec.js"

/** Digest function used by the diffuser (concatenation of the parts). */
export type DigestFn = (hash: HashName, parts: ReadonlyArray<Uint8Array>) => Uint8Array

/**
 * The LUKS diffusion function H (spec §2.2): the block is cut into pieces of
 * the digest length (the last one possibly shorter); piece `i` is replaced by
 * the first bytes of hash(be32(i) || piece). Replaces `block` in place.
 */
export const diffuse = (digest: DigestFn, hash: HashName, block: Uint8Array): void => {
  const dlen = HASH_DIGEST_LENGTH[hash]
  const counter = new Uint8Array(4)
  const view = new DataView(counter.buffer)
  for (let i = 0, off = 0; off < block.length; i++, off += dlen) {
    const piece = block.subarray(off, Math.min(off + dlen, block.length))
    view.setUint32(0, i, false)
    const d = digest(hash, [counter, piece])
    piece.set(d.subarray(0, piece.length))
    d.fill(0)
  }
}

const xorInto = (dst: Uint8Array, src: Uint8Array): void => {
  for (let i = 0; i < dst.length; i++) dst[i] ^= src[i]!
}

/**
 * AF-split `key` into `stripes` blocks (spec §2.2, AFsplit): blocks
 * s_1..s_{k-1} are `random`; d_0 = 0, d_i = H(d_{i-1} ^ s_i); the last block is
 * s_k = d_{k-1} ^ key. Returns `key.length * stripes` bytes.
 */
export const afSplit = (
  digest: DigestFn,
  hash: HashName,
  key: Uint8Array,
  stripes: number,
  random: (length: number) => Uint8Array
): Uint8Array => {
  const n = key.length
  const out = new Uint8Array(n * stripes)
  out.set(random(n * (stripes - 1)))
  const d = new Uint8Array(n)
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, out.subarray(i * n, (i + 1) * n))
    diffuse(digest, hash, d)
  }
  const last = out.subarray((stripes - 1) * n)
  for (let j = 0; j < n; j++) last[j] = d[j]! ^ key[j]!
  d.fill(0)
  return out
}

/**
 * AF-merge (spec §2.2, AFmerge): recover a `keyLength`-byte key from
 * `keyLength * stripes` bytes of split material.
 */
export const afMerge = (
  digest: DigestFn,
  hash: HashName,
  material: Uint8Array,
  keyLength: number,
  stripes: number
): Uint8Array => {
  const d = new Uint8Array(keyLength)
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, material.subarray(i * keyLength, (i + 1) * keyLength))
    diffuse(digest, hash, d)
  }
  const key = new Uint8Array(keyLength)
  const last = material.subarray((stripes - 1) * keyLength, stripes * keyLength)
  for (let j = 0; j < keyLength; j++) key[j] = d[j]! ^ last[j]!
  d.fill(0)
  return key
}
