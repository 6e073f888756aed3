import * as nodeCrypto from "node:crypto"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  makeSectorCipher,
  portableBackend,
  specKeyBytes,
  type CipherSpec
} from "../src/index.js"
import { nodeBackend } from "../src/node.js"
import { expectBytes, expectThrowsCryptoError, plain64Iv, randomBytes, referenceSectors } from "./helpers.js"

const SPECS: ReadonlyArray<CipherSpec> = [
  { cipher: "aes", keyBits: 256, mode: "xts", ivgen: "plain64" },
  { cipher: "aes", keyBits: 128, mode: "xts", ivgen: "plain64" },
  { cipher: "aes", keyBits: 192, mode: "xts", ivgen: "plain64" },
  { cipher: "aes", keyBits: 256, mode: "xts", ivgen: "essiv", ivgenHash: "sha256" },
  { cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "plain64" },
  { cipher: "aes", keyBits: 256, mode: "cbc", ivgen: "plain" },
  { cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "essiv", ivgenHash: "sha256" },
  { cipher: "aes", keyBits: 192, mode: "cbc", ivgen: "essiv", ivgenHash: "md5" },
  { cipher: "aes", keyBits: 256, mode: "ctr", ivgen: "plain64" },
  { cipher: "aes", keyBits: 128, mode: "ctr", ivgen: "essiv", ivgenHash: "sha256" },
  { cipher: "aes", keyBits: 256, mode: "ecb", ivgen: "plain64" }
]

const name = (s: CipherSpec) => `aes-${s.keyBits}-${s.mode}-${s.ivgen}${s.ivgenHash ? `:${s.ivgenHash}` : ""}`

/** ESSIV IV reference: AES-ECB(key = H(master key)) of the plain64 block. */
const essivIv = (spec: CipherSpec, key: Uint8Array) => {
  const salt = nodeCrypto.createHash(spec.ivgenHash!).update(key).digest()
  return (sector: number) => {
    const c = nodeCrypto.createCipheriv(`aes-${salt.length * 8}-ecb`, salt, null)
    c.setAutoPadding(false)
    return c.update(plain64Iv(sector))
  }
}

const ivOf = (spec: CipherSpec, key: Uint8Array): ((sector: number) => Buffer) => {
  switch (spec.ivgen) {
    case "plain64":
      return plain64Iv
    case "plain":
      return (s) => plain64Iv(s % 2 ** 32)
    case "essiv":
      return essivIv(spec, key)
  }
}

/** Reference with node:crypto's own modes, one cipher object per sector. */
const reference = (spec: CipherSpec, key: Uint8Array, first: number, data: Uint8Array, encrypt: boolean) => {
  if (spec.mode === "xts" && spec.keyBits === 192) return undefined // OpenSSL has no AES-192-XTS
  return referenceSectors(`aes-${spec.keyBits}-${spec.mode}`, key, ivOf(spec, key), first, data, encrypt)
}

const sectorArb = fc.oneof(
  fc.integer({ min: 0, max: 1000 }),
  fc.integer({ min: 2 ** 32 - 200, max: 2 ** 32 + 200 }),
  fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - 1024 })
)

describe.each(SPECS.map((s) => [name(s), s] as const))("%s", (_n, spec) => {
  it("node and portable kernels agree with each other and with per-sector node:crypto", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: specKeyBytes(spec), maxLength: specKeyBytes(spec) }),
        sectorArb,
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 0, max: 3 }),
        (key, sector, sectors, misalign) => {
          if (spec.mode === "xts" && Buffer.compare(key.subarray(0, key.length / 2), key.subarray(key.length / 2)) === 0) {
            return // OpenSSL rejects XTS keys whose halves are equal
          }
          const plain = randomBytes(sectors * 512)
          const a = makeSectorCipher(nodeBackend, spec, key)
          const b = makeSectorCipher(portableBackend, spec, key)
          // Misaligned input and output views exercise the byte-wise paths.
          const backing = new Uint8Array(plain.length + misalign)
          const inp = backing.subarray(misalign)
          inp.set(plain)
          const outA = new Uint8Array(plain.length)
          a.encrypt(sector, inp, outA)
          expectBytes(inp, plain)
          const outB = plain.slice()
          b.encrypt(sector, outB)
          expectBytes(outB, outA)
          const ref = reference(spec, key, sector, plain, true)
          if (ref) expectBytes(outA, ref)
          a.decrypt(sector, outB)
          expectBytes(outB, plain)
          b.decrypt(sector, outA)
          expectBytes(outA, plain)
          a.dispose()
          b.dispose()
        }
      ),
      { numRuns: 40 }
    )
  })

  it("splitting a run into pieces gives the same result", () => {
    const key = randomBytes(specKeyBytes(spec))
    const c = makeSectorCipher(portableBackend, spec, key)
    const plain = randomBytes(200 * 512)
    const whole = plain.slice()
    c.encrypt(77, whole)
    const pieces = plain.slice()
    for (const [from, to] of [
      [0, 1],
      [1, 130],
      [130, 200]
    ] as const) {
      c.encrypt(77 + from, pieces.subarray(from * 512, to * 512))
    }
    expectBytes(pieces, whole)
  })
})

describe("argument checks", () => {
  const spec = SPECS[0]!
  const cipher = makeSectorCipher(nodeBackend, spec, randomBytes(64))
  it("rejects lengths that are not whole sectors, negative or unsafe sectors, bad outputs", () => {
    expectThrowsCryptoError(() => cipher.encrypt(0, new Uint8Array(100)), "InvalidArgument")
    expectThrowsCryptoError(() => cipher.encrypt(-1, new Uint8Array(512)), "InvalidArgument")
    expectThrowsCryptoError(() => cipher.encrypt(1.5, new Uint8Array(512)), "InvalidArgument")
    expectThrowsCryptoError(() => cipher.encrypt(Number.MAX_SAFE_INTEGER, new Uint8Array(1024)), "InvalidArgument")
    expectThrowsCryptoError(() => cipher.encrypt(0, new Uint8Array(512), new Uint8Array(1024)), "InvalidArgument")
    const buf = new Uint8Array(2048)
    expectThrowsCryptoError(() => cipher.encrypt(0, buf.subarray(0, 1024), buf.subarray(512, 1536)), "InvalidArgument")
  })
  it("rejects wrong key sizes and ESSIV without a usable hash", () => {
    expectThrowsCryptoError(() => makeSectorCipher(portableBackend, spec, randomBytes(32)), "InvalidArgument")
    const essiv: CipherSpec = { cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "essiv" }
    expectThrowsCryptoError(() => makeSectorCipher(nodeBackend, essiv, randomBytes(16)), "InvalidArgument")
    expectThrowsCryptoError(() => makeSectorCipher(nodeBackend, { ...essiv, ivgenHash: "sha512" }, randomBytes(16)), "InvalidArgument")
  })
  it("refuses use after dispose", () => {
    const c = makeSectorCipher(portableBackend, spec, randomBytes(64))
    c.dispose()
    expectThrowsCryptoError(() => c.decrypt(0, new Uint8Array(512)), "InvalidArgument")
  })
  it("dispose zeroes portable key schedules and drops node cipher objects", () => {
    const key = randomBytes(32)
    const block = randomBytes(16)
    const p = portableBackend.aes(key)
    const q = portableBackend.aes(randomBytes(32))
    expect(p.encryptBlocks(block.slice())).not.toEqual(q.encryptBlocks(block.slice()))
    p.dispose()
    q.dispose()
    // Once every round key is zero, the two engines compute the same permutation.
    expect(p.encryptBlocks(block.slice())).toEqual(q.encryptBlocks(block.slice()))
    const n = nodeBackend.aes(key)
    n.dispose()
    expectThrowsCryptoError(() => n.encryptBlocks(block.slice()), "InvalidArgument")
  })
  it("empty input is a no-op", () => {
    expect(() => cipher.encrypt(5, new Uint8Array(0))).not.toThrow()
  })
})
