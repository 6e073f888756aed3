import type { HashName } from "./spec.js"

/**
 * An AES key schedule with batch ECB operations. Mode code (XTS, CBC, CTR,
 * ESSIV) is written once on top of this in `modes.ts`; a backend only has to
 * make these few calls fast.
 *
 * Buffers handed to these methods are always scratch buffers owned by the mode
 * code: 16-byte aligned (`byteOffset % 16 === 0`) and a whole number of blocks.
 */
export interface AesEngine {
  /** Key length in bytes (16, 24 or 32). */
  readonly keyBytes: number
  /**
   * AES-ECB encrypt `buf`. Returns the result: either `buf` itself (encrypted
   * in place) or a new array (node:crypto hands back a fresh Buffer, and using
   * it directly saves a copy). Callers must use the return value.
   */
  encryptBlocks(buf: Uint8Array): Uint8Array
  /** AES-ECB decrypt `buf`; same contract as {@link encryptBlocks}. */
  decryptBlocks(buf: Uint8Array): Uint8Array
  /**
   * CBC-encrypt `count` independent chains of `chainBytes` each, in place:
   * chain `i` is `buf[i*chainBytes ..]` with IV `ivs[i*16 .. i*16+16]`.
   * (CBC encryption is sequential inside a chain, so batch engines interleave
   * chains instead.)
   */
  cbcEncryptChains(ivs: Uint8Array, buf: Uint8Array, chainBytes: number, count: number): void
  /** Forget the key: zero what JavaScript can reach. */
  dispose(): void
}

/**
 * The primitives a kernel implementation provides: AES engines, hashes,
 * PBKDF2 and randomness. Two implementations exist: `nodeBackend`
 * (node:crypto, in `@qcow2/crypto/node`) and `portableBackend`
 * (@noble/ciphers + @noble/hashes, works in browsers).
 */
export interface CryptoBackend {
  /** `"node"` or `"portable"`. */
  readonly name: string
  /** Expand an AES key of 16, 24 or 32 bytes. The key bytes are copied. */
  aes(key: Uint8Array): AesEngine
  /** Digest of the concatenation of `parts`. */
  digest(hash: HashName, parts: ReadonlyArray<Uint8Array>): Uint8Array
  /** PBKDF2-HMAC (RFC 8018 §5.2). Asynchronous so it does not block the event loop. */
  pbkdf2(hash: HashName, password: Uint8Array, salt: Uint8Array, iterations: number, length: number): Promise<Uint8Array>
  /** Cryptographically secure random bytes. */
  randomBytes(length: number): Uint8Array
  /**
   * CPU time consumed by this process, in milliseconds, for timing PBKDF2 the
   * way QEMU does (it reads thread CPU time, so a busy machine does not lower
   * the iteration counts). Absent where no such clock exists (browsers):
   * wall-clock time is used instead.
   */
  readonly cpuTimeMs?: (() => number) | undefined
}
