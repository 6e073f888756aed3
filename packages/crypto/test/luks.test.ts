import { Effect, Exit } from "effect"
import { describe, expect, it } from "vitest"
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_HEADER_SIZE,
  luksLayout,
  makeSectorCipherFactory,
  portableBackend,
  resolveLuksCipher,
  SectorCipherFactory,
  layerPortable,
  specFromOptions,
  type CreateLuksOptions,
  type LuksHeader
} from "../src/index.js"
import { layerNode, nodeBackend } from "../src/node.js"
import { expectBytes, expectCryptoError, expectThrowsCryptoError, randomBytes } from "./helpers.js"

const factories = [makeSectorCipherFactory(nodeBackend), makeSectorCipherFactory(portableBackend)]
const fast: Partial<CreateLuksOptions> = { slotIterations: 1000, masterKeyIterations: 1000 }

const failure = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const err = exit.cause.reasons.find((r) => r._tag === "Fail")
  if (!err || err._tag !== "Fail") throw new Error(`expected a typed failure, got ${String(exit.cause)}`)
  return err.error
}

describe("LUKS1 header codec (spec §2.4, §2.5)", () => {
  const sample = (): LuksHeader => {
    const layout = luksLayout(64)
    return {
      version: 1,
      cipherName: "aes",
      cipherMode: "xts-plain64",
      hashSpec: "sha256",
      payloadOffset: layout.payloadOffset,
      keyBytes: 64,
      mkDigest: randomBytes(20),
      mkDigestSalt: randomBytes(32),
      mkDigestIterations: 12345,
      uuid: "d76a9906-ef8c-41e1-99df-27ab9d71eb34",
      keySlots: layout.keyMaterialOffsets.map((offset, i) => ({
        active: i === 0,
        iterations: i === 0 ? 99 : 0,
        salt: i === 0 ? randomBytes(32) : new Uint8Array(32),
        keyMaterialOffset: offset,
        stripes: 4000
      }))
    }
  }

  it("QEMU's layout for aes-256-xts: key material at 8, 512, ... sectors, payload at 4040", () => {
    expect(luksLayout(64)).toEqual({ keyMaterialOffsets: [8, 512, 1016, 1520, 2024, 2528, 3032, 3536], payloadOffset: 4040 })
    expect(luksLayout(32).payloadOffset).toBe(2056)
    expect(luksLayout(48).keyMaterialOffsets[1]).toBe(384)
    expect(luksLayout(16).payloadOffset).toBe(1032)
  })

  it("encode/decode round trip, with field offsets as in the spec", () => {
    const h = sample()
    const bytes = encodeLuksHeader(h)
    expect(bytes.length).toBe(LUKS_HEADER_SIZE)
    expect(Buffer.from(bytes.subarray(0, 8)).toString("hex")).toBe("4c554b53babe0001")
    expect(new DataView(bytes.buffer).getUint32(104)).toBe(4040)
    expect(new DataView(bytes.buffer).getUint32(208)).toBe(0x00ac71f3)
    expect(new DataView(bytes.buffer).getUint32(256)).toBe(0x0000dead)
    expect(decodeLuksHeader(bytes)).toEqual(h)
  })

  const corrupt = (patch: (b: Uint8Array, v: DataView) => void, reason: RegExp) => () => {
    const b = encodeLuksHeader(sample())
    patch(b, new DataView(b.buffer))
    expectThrowsCryptoError(() => decodeLuksHeader(b), "InvalidLuksHeader", reason)
  }
  it("rejects bad magic", corrupt((b) => (b[0] = 0), /magic/))
  it("rejects version 2", corrupt((_b, v) => v.setUint16(6, 2), /version 2/))
  it("rejects a cipher name without NUL", corrupt((b) => b.fill(0x61, 8, 40), /cipher-name is not NUL/))
  it("rejects a payload inside the header", corrupt((_b, v) => v.setUint32(104, 4), /payload offset/))
  it("rejects zero master key iterations", corrupt((_b, v) => v.setUint32(164, 0), /iteration count is zero/))
  it("rejects a corrupted slot state", corrupt((_b, v) => v.setUint32(208 + 48, 7), /state/))
  it("rejects an enabled slot with zero iterations", corrupt((_b, v) => v.setUint32(212, 0), /iteration count is zero/))
  it("rejects overlapping slots", corrupt((_b, v) => v.setUint32(208 + 48 + 40, 100), /overlap/))
  it("rejects key material past the payload", corrupt((_b, v) => v.setUint32(208 + 7 * 48 + 40, 3800), /payload/))
  it("rejects key material inside the header", corrupt((_b, v) => v.setUint32(208 + 40, 2), /header/))
  it("rejects a truncated header", () => {
    expectThrowsCryptoError(() => decodeLuksHeader(new Uint8Array(100)), "InvalidLuksHeader", /needs 592 bytes/)
  })
})

describe("cipher names", () => {
  it("resolves the strings QEMU writes", () => {
    expect(resolveLuksCipher("aes", "xts-plain64", 64)).toEqual({
      cipher: "aes",
      keyBits: 256,
      mode: "xts",
      ivgen: "plain64",
      ivgenHash: undefined
    })
    expect(resolveLuksCipher("aes", "cbc-essiv:sha256", 16)).toMatchObject({ keyBits: 128, ivgen: "essiv", ivgenHash: "sha256" })
    expect(resolveLuksCipher("aes", "xts-plain64", 48)).toMatchObject({ keyBits: 192 })
  })
  it.each([
    ["twofish", "xts-plain64", 64, /only AES/],
    ["serpent", "cbc-plain64", 32, /only AES/],
    ["cast5", "cbc-plain64", 16, /only AES/],
    ["aes", "xts-benbi", 64, /IV generator/],
    ["aes", "lrw-plain64", 64, /cipher mode/],
    ["aes", "cbc-essiv:sha1", 32, /20-byte key/],
    ["aes", "cbc-essiv", 32, /needs an IV generator hash/],
    ["aes", "xts-plain64", 40, /key bytes/],
    ["aes", "xtsplain64", 64, /form/]
  ] as const)("%s %s with %i key bytes is UnsupportedCipher", (cipher, mode, keyBytes, reason) => {
    const e = expectCryptoError(resolveLuksCipher(cipher, mode, keyBytes), "UnsupportedCipher", reason)
    expect(e).toMatchObject({ cipher, mode })
  })
  it("qemu-img style options with QEMU's defaults", () => {
    expect(specFromOptions({})).toMatchObject({ keyBits: 256, mode: "xts", ivgen: "plain64" })
    expect(specFromOptions({ cipherMode: "cbc", ivgenAlg: "essiv" })).toMatchObject({ ivgenHash: "sha256" })
    expectCryptoError(specFromOptions({ cipherAlg: "twofish-256" }), "UnsupportedCipher", /only aes-128/)
    expectCryptoError(specFromOptions({ cipherAlg: "3des" }), "UnsupportedCipher", /unknown cipher algorithm/)
    // A mode problem names the qemu-img option values, not the LUKS strings.
    const e = expectCryptoError(specFromOptions({ cipherAlg: "aes-128", ivgenAlg: "benbi" }), "UnsupportedCipher", /IV generator benbi/)
    expect(e).toMatchObject({ cipher: "aes-128", mode: "xts-benbi" })
  })
})

describe.each(factories.map((f) => [f.backend, f] as const))("LUKS create/open round trip (%s)", (_n, factory) => {
  it("create then open with the right passphrase; data round-trips through both ciphers", async () => {
    const created = await Effect.runPromise(factory.createLuks({ passphrase: "abc123", ...fast }))
    expect(created.area.length).toBe(4040 * 512)
    expect(created.header.keySlots.map((s) => s.active)).toEqual([true, false, false, false, false, false, false, false])
    const opened = await Effect.runPromise(factory.openLuks(created.area, "abc123"))
    expect(opened.slot).toBe(0)
    expect(opened.header).toEqual(created.header)
    const data = randomBytes(4096)
    const enc = data.slice()
    created.cipher.encrypt(1234, enc)
    opened.cipher.decrypt(1234, enc)
    expectBytes(enc, data)
    created.cipher.dispose()
    opened.cipher.dispose()
  })

  it("wrong passphrase fails with BadPassphrase", async () => {
    const created = await Effect.runPromise(factory.createLuks({ passphrase: "right", ...fast }))
    const err = failure(await Effect.runPromiseExit(factory.openLuks(created.area, "wrong")))
    expectCryptoError(err, "BadPassphrase", /1 active slot/)
    expect(err.slotsTried).toBe(1)
  })

  it.each([
    [{ cipherAlg: "aes-128", cipherMode: "cbc", ivgenAlg: "essiv" }, 1032],
    [{ cipherAlg: "aes-192", cipherMode: "cbc", ivgenAlg: "plain", hashAlg: "sha1" }, 1544],
    [{ cipherAlg: "aes-192", cipherMode: "xts", hashAlg: "sha512" }, 3016],
    [{ cipherMode: "ctr", hashAlg: "ripemd160" }, 2056],
    [{ cipherMode: "ecb", hashAlg: "md5" }, 2056]
  ] as const)("variant %o (payload offset %i)", async (opts, payload) => {
    const created = await Effect.runPromise(factory.createLuks({ passphrase: "pw", ...fast, ...opts }))
    expect(created.header.payloadOffset).toBe(payload)
    const opened = await Effect.runPromise(factory.openLuks(created.area, new TextEncoder().encode("pw")))
    const data = randomBytes(1024)
    const enc = data.slice()
    created.cipher.encrypt(9, enc)
    opened.cipher.decrypt(9, enc)
    expectBytes(enc, data)
  })

  it("a reader gets only the header and the active slot's key material", async () => {
    const created = await Effect.runPromise(factory.createLuks({ passphrase: "pw", ...fast }))
    const reads: Array<[number, number]> = []
    const reader = (offset: number, length: number) =>
      Effect.sync(() => {
        reads.push([offset, length])
        return created.area.slice(offset, offset + length)
      })
    await Effect.runPromise(factory.openLuks(reader, "pw"))
    expect(reads).toEqual([
      [0, 592],
      [4096, 256000]
    ])
  })

  it("unsupported cipher in a header is UnsupportedCipher; a truncated area is InvalidLuksHeader", async () => {
    const created = await Effect.runPromise(factory.createLuks({ passphrase: "pw", ...fast }))
    const area = created.area.slice()
    area.set(new TextEncoder().encode("twofish\0"), 8)
    expectCryptoError(failure(await Effect.runPromiseExit(factory.openLuks(area, "pw"))), "UnsupportedCipher", /twofish/)
    const short = created.area.slice(0, 100_000)
    expectCryptoError(failure(await Effect.runPromiseExit(factory.openLuks(short, "pw"))), "InvalidLuksHeader")
  })

  it("rejects unsupported options and bad iteration counts", async () => {
    for (const [opts, reason] of [
      [{ cipherAlg: "serpent-256" }, "UnsupportedCipher"],
      [{ hashAlg: "whirlpool" }, "UnsupportedCipher"],
      [{ slotIterations: 0 }, "InvalidArgument"],
      [{ masterKeyIterations: 2 ** 32 }, "InvalidArgument"],
      [{ masterKey: new Uint8Array(10) }, "InvalidArgument"]
    ] as const) {
      const exit = await Effect.runPromiseExit(factory.createLuks({ passphrase: "pw", ...fast, ...opts }))
      expectCryptoError(failure(exit), reason)
    }
  })
})

describe("service layers", () => {
  it("layerNode and layerPortable provide SectorCipherFactory; a given master key round-trips", async () => {
    const masterKey = randomBytes(64)
    const program = Effect.gen(function* () {
      const f = yield* SectorCipherFactory
      const created = yield* f.createLuks({ passphrase: "x", masterKey, ...fast })
      const opened = yield* f.openLuks(created.area, "x")
      return { backend: f.backend, created, opened }
    })
    const viaNode = await Effect.runPromise(Effect.provide(program, layerNode))
    const viaPortable = await Effect.runPromise(Effect.provide(program, layerPortable))
    expect(viaNode.backend).toBe("node")
    expect(viaPortable.backend).toBe("portable")
    // Same master key: both payload ciphers are identical.
    const data = randomBytes(2048)
    const a = data.slice()
    const b = data.slice()
    viaNode.opened.cipher.encrypt(42, a)
    viaPortable.opened.cipher.encrypt(42, b)
    expectBytes(a, b)
  })

  it("measures PBKDF2 speed when no iteration counts are given (iterTimeMs)", async () => {
    const f = makeSectorCipherFactory(nodeBackend)
    const created = await Effect.runPromise(f.createLuks({ passphrase: "pw", iterTimeMs: 40 }))
    const slot = created.header.keySlots[0]!
    expect(slot.iterations).toBeGreaterThanOrEqual(1000)
    expect(created.header.mkDigestIterations).toBeGreaterThanOrEqual(1000)
    const opened = await Effect.runPromise(f.openLuks(created.area, "pw"))
    expect(opened.slot).toBe(0)
  })

  it("legacy AES key: passphrase bytes truncated or zero-padded to 16", () => {
    const [node, portable] = factories
    const data = randomBytes(1024)
    const a = data.slice()
    node!.legacyAes("0123456789abcdefEXTRA").encrypt(3, a)
    const b = data.slice()
    portable!.sectorCipher({ cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "plain64" }, new TextEncoder().encode("0123456789abcdef")).encrypt(3, b)
    expectBytes(a, b)
    const c = data.slice()
    node!.legacyAes("abc").encrypt(3, c)
    const key = new Uint8Array(16)
    key.set([0x61, 0x62, 0x63])
    const d = data.slice()
    portable!.sectorCipher({ cipher: "aes", keyBits: 128, mode: "cbc", ivgen: "plain64" }, key).encrypt(3, d)
    expectBytes(c, d)
  })
})
