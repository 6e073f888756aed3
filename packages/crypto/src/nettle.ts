/**
 * PBKDF2 through libnettle, the library QEMU's LUKS code calls on Debian
 * (crypto/pbkdf-nettle.c), bound with koffi when both can be loaded.
 *
 * node:crypto's PBKDF2 (OpenSSL 3) takes about twice as long per iteration
 * as nettle's on x86-64: 677 024 iterations of HMAC-SHA256 for a 64-byte
 * key (an aes-256-xts slot that qemu-img made with iter-time=200) took
 * 356-516 ms against 237 ms. Unlocking a LUKS image is nothing else, so an
 * image QEMU made with the default iter-time (2 s) took 5.8 s to open here
 * (about 2.9 s through nettle; qemu-io about 2.5 s).
 * Same bytes either way (tests compare the two). The call runs on koffi's
 * asynchronous thread, off the event loop.
 *
 * One derivation at a time goes to nettle; one asked for while another
 * runs is declined (node:crypto does it, on the libuv thread pool, so two
 * unlocks still run side by side). koffi 3.3.4 corrupts the heap when a
 * dozen asynchronous calls are started at once (malloc aborts the
 * process), and one at a time never did (thousands of calls, checked
 * against node:crypto).
 *
 * Undefined where it cannot be had (not Linux on x64/arm64, koffi or
 * libnettle missing); the caller then uses node:crypto.
 */
import { koffi, type NativeFunction } from "@qcow2/native"
import type { HashName } from "./spec.js"

/**
 * PBKDF2-HMAC with one of nettle's hashes; undefined (at once, or as the
 * promise's value) when nettle does not do it: a hash it has no PBKDF2
 * for, an iteration count past its `unsigned`, another derivation running,
 * or koffi refusing the call.
 */
export type NettlePbkdf2 = (
  hash: HashName,
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  length: number
) => Promise<Uint8Array | undefined> | undefined

/** The hashes nettle 3 has a pbkdf2_hmac_* function for (LUKS1 headers name sha1, sha256 or sha512). */
const NETTLE_HASHES = ["sha1", "sha256", "sha384", "sha512"] as const satisfies ReadonlyArray<HashName>

/** nettle's `unsigned` iteration count. */
const MAX_ITERATIONS = 0xffff_ffff

const load = async (): Promise<NettlePbkdf2 | undefined> => {
  const loader = koffi()
  if (loader === undefined) return undefined
  try {
    const library = loader.load("libnettle.so.8")
    const functions = new Map<HashName, NativeFunction>()
    for (const hash of NETTLE_HASHES) {
      functions.set(
        hash,
        library.func(
          `void nettle_pbkdf2_hmac_${hash}(size_t key_length, const uint8_t *key, unsigned int iterations, size_t salt_length, const uint8_t *salt, size_t length, _Out_ uint8_t *dst)`
        )
      )
    }
    let running = false
    return (hash, password, salt, iterations, length) => {
      const f = functions.get(hash)
      if (running || f === undefined || !Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS || length < 1) return undefined
      running = true
      return new Promise((resolve) => {
        const out = new Uint8Array(length)
        const settle = (result: Uint8Array | undefined) => {
          running = false
          resolve(result)
        }
        try {
          f.async(password.length, password, iterations, salt.length, salt, length, out, (error: unknown) => settle(error ? undefined : out))
        } catch {
          settle(undefined)
        }
      })
    }
  } catch {
    return undefined
  }
}

let loaded: Promise<NettlePbkdf2 | undefined> | undefined

/** The process's libnettle PBKDF2, loaded on first use; undefined where it cannot be had. */
export const nettlePbkdf2 = (): Promise<NettlePbkdf2 | undefined> => (loaded ??= load())
