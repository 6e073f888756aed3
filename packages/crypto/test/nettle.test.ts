/**
 * PBKDF2 through libnettle (src/nettle.ts) gives node:crypto's bytes for
 * every hash it takes, and the Node backend falls back to node:crypto for
 * the others.
 */
import { existsSync } from "node:fs"
import * as nodeCrypto from "node:crypto"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { nettlePbkdf2 } from "../src/nettle.js"
import { nodeBackend } from "../src/node.js"
import type { HashName } from "../src/spec.js"

/** Where Debian (and the CI machine, through qemu-utils → gnutls) installs it. */
const hasNettle = ["/usr/lib/x86_64-linux-gnu/libnettle.so.8", "/usr/lib/aarch64-linux-gnu/libnettle.so.8"].some((f) => existsSync(f))

describe("PBKDF2 through libnettle", () => {
  it.runIf(hasNettle)("loads, and gives node:crypto's bytes for sha1, sha256, sha384 and sha512 (empty password or salt, any output length)", async () => {
    const nettle = await nettlePbkdf2()
    expect(nettle).toBeDefined()
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<HashName>("sha1", "sha256", "sha384", "sha512"),
        fc.uint8Array({ minLength: 0, maxLength: 100 }),
        fc.uint8Array({ minLength: 0, maxLength: 40 }),
        fc.integer({ min: 1, max: 3000 }),
        fc.integer({ min: 1, max: 200 }),
        async (hash, password, salt, iterations, length) => {
          const got = await nettle!(hash, password, salt, iterations, length)
          expect(got).toBeDefined()
          expect(Buffer.from(got!).toString("hex")).toBe(nodeCrypto.pbkdf2Sync(password, salt, iterations, length, hash).toString("hex"))
        }
      ),
      { numRuns: 60 }
    )
  })

  it.runIf(hasNettle)("reads password and salt from views into larger buffers (a LUKS slot's salt is a view into the header)", async () => {
    const nettle = (await nettlePbkdf2())!
    const backing = nodeCrypto.randomBytes(300)
    const password = new Uint8Array(backing.buffer, backing.byteOffset + 7, 19)
    const salt = new Uint8Array(backing.buffer, backing.byteOffset + 101, 32)
    const got = await nettle("sha256", password, salt, 1000, 64)
    expect(Buffer.from(got!).toString("hex")).toBe(nodeCrypto.pbkdf2Sync(password, salt, 1000, 64, "sha256").toString("hex"))
  })

  it.runIf(hasNettle)("declines what it has no function for, which the Node backend then derives with node:crypto", async () => {
    const nettle = (await nettlePbkdf2())!
    const password = new TextEncoder().encode("hunter2")
    const salt = new Uint8Array(32).fill(7)
    for (const hash of ["md5", "sha224", "ripemd160"] as const) {
      expect(nettle(hash, password, salt, 100, 32)).toBeUndefined()
      const got = await nodeBackend.pbkdf2(hash, password, salt, 100, 32)
      expect(Buffer.from(got).toString("hex")).toBe(nodeCrypto.pbkdf2Sync(password, salt, 100, 32, hash).toString("hex"))
    }
    expect(nettle("sha256", password, salt, 0, 32)).toBeUndefined()
    expect(nettle("sha256", password, salt, 2 ** 32, 32)).toBeUndefined()
  })
})

describe("PBKDF2 through libnettle, many at once", () => {
  it.runIf(hasNettle)("declines a derivation while one runs; 200 at once through the Node backend all give node:crypto's bytes, and nettle serves again after", async () => {
    const nettle = (await nettlePbkdf2())!
    const first = nettle("sha256", new Uint8Array(4), new Uint8Array(4), 50_000, 32)
    expect(first).toBeDefined()
    expect(nettle("sha256", new Uint8Array(4), new Uint8Array(4), 10, 32)).toBeUndefined()
    expect(await first).toBeDefined()
    const salt = new Uint8Array(16).fill(3)
    const passwords = Array.from({ length: 200 }, (_, k) => new TextEncoder().encode(`pass-${k}`))
    const got = await Promise.all(passwords.map((p) => nodeBackend.pbkdf2("sha256", p, salt, 2000, 64)))
    got.forEach((key, k) => expect(Buffer.from(key).toString("hex")).toBe(nodeCrypto.pbkdf2Sync(passwords[k]!, salt, 2000, 64, "sha256").toString("hex")))
    expect(await nettle("sha256", new Uint8Array(4), new Uint8Array(4), 10, 32)).toBeDefined()
  })
})
