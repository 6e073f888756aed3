import * as nodeCrypto from "node:crypto"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { afMerge, afSplit, diffuse, HASH_DIGEST_LENGTH, type HashName } from "../src/index.js"
import { backends, randomBytes } from "./helpers.js"

const HASHES = Object.keys(HASH_DIGEST_LENGTH) as Array<HashName>

describe("AF splitter (LUKS1 spec §2.2)", () => {
  for (const backend of backends) {
    it(`${backend.name}: split then merge returns the key for every hash and key length`, () => {
      fc.assert(
        fc.property(
          fc.constantFrom(...HASHES),
          fc.constantFrom(16, 24, 32, 48, 64, 20, 33),
          fc.integer({ min: 1, max: 50 }),
          (hash, keyLength, stripes) => {
            const key = randomBytes(keyLength)
            const split = afSplit(backend.digest, hash, key, stripes, randomBytes)
            expect(split.length).toBe(keyLength * stripes)
            expect(afMerge(backend.digest, hash, split, keyLength, stripes)).toEqual(key)
          }
        ),
        { numRuns: 60 }
      )
    })
  }

  it("the diffuser hashes each digest-sized piece with a big-endian counter prefix, truncating the last", () => {
    const block = randomBytes(50) // sha1: pieces of 20, 20, 10
    const expected = new Uint8Array(50)
    for (let i = 0; i < 3; i++) {
      const piece = block.subarray(i * 20, Math.min(50, i * 20 + 20))
      const counter = Buffer.alloc(4)
      counter.writeUInt32BE(i)
      const d = nodeCrypto.createHash("sha1").update(counter).update(piece).digest()
      expected.set(d.subarray(0, piece.length), i * 20)
    }
    for (const backend of backends) {
      const b = block.slice()
      diffuse(backend.digest, "sha1", b)
      expect(b).toEqual(expected)
    }
  })

  it("4000 stripes with sha256 and a 64-byte key; every stripe matters", () => {
    const [node, portable] = backends
    const key = randomBytes(64)
    const split = afSplit(node!.digest, "sha256", key, 4000, randomBytes)
    expect(afMerge(portable!.digest, "sha256", split, 64, 4000)).toEqual(key)
    for (const stripe of [0, 1999, 3999]) {
      const damaged = split.slice()
      damaged[stripe * 64 + 5]! ^= 1
      expect(afMerge(node!.digest, "sha256", damaged, 64, 4000)).not.toEqual(key)
    }
  })
})
