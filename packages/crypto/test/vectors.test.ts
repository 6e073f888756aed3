import { describe, expect, it } from "vitest"
import { makeSectorCipher, type CipherSpec } from "../src/index.js"
import { backends, hex, toHex } from "./helpers.js"

// IEEE 1619-2007 Annex B XTS-AES vectors 4 (AES-128) and 10 (AES-256): 512-byte data units.
const PT512 = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff)
const V4 = {
  key: "27182818284590452353602874713526" + "31415926535897932384626433832795",
  unit: 0,
  ct:
    "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89cc78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad02655ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f4341332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203ebb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18deb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568"
}
const V10 = {
  key:
    "2718281828459045235360287471352662497757247093699959574966967627" +
    "3141592653589793238462643383279502884197169399375105820974944592",
  unit: 255,
  ct:
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151"
}

// NIST SP 800-38A Appendix F: F.1.1/F.1.3/F.1.5 (ECB) and F.2.1/F.2.3/F.2.5 (CBC) encrypt.
const NIST_PT =
  "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
const NIST_IV = "000102030405060708090a0b0c0d0e0f"
const NIST = [
  {
    key: "2b7e151628aed2a6abf7158809cf4f3c",
    ecb: "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4",
    cbc: "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"
  },
  {
    key: "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
    ecb: "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eefef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e",
    cbc: "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"
  },
  {
    key: "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
    ecb: "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7",
    cbc: "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"
  }
]

// RFC 6070 (PBKDF2-HMAC-SHA1) and the matching widely published PBKDF2-HMAC-SHA256 values.
const PBKDF2 = [
  { hash: "sha1", c: 1, len: 20, out: "0c60c80f961f0e71f3a9b524af6012062fe037a6" },
  { hash: "sha1", c: 2, len: 20, out: "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957" },
  { hash: "sha1", c: 4096, len: 20, out: "4b007901b765489abead49d926f721d065a429c1" },
  { hash: "sha256", c: 1, len: 32, out: "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b" },
  { hash: "sha256", c: 2, len: 32, out: "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43" },
  { hash: "sha256", c: 4096, len: 32, out: "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a" }
] as const

for (const backend of backends) {
  describe(`${backend.name} kernels: known-answer vectors`, () => {
    it.each([
      ["IEEE 1619 vector 4 (AES-128)", V4, 128],
      ["IEEE 1619 vector 10 (AES-256)", V10, 256]
    ] as const)("%s", (_name, v, bits) => {
      const spec: CipherSpec = { cipher: "aes", keyBits: bits, mode: "xts", ivgen: "plain64" }
      const cipher = makeSectorCipher(backend, spec, hex(v.key))
      const data = PT512.slice()
      cipher.encrypt(v.unit, data)
      expect(toHex(data)).toBe(v.ct)
      cipher.decrypt(v.unit, data)
      expect(data).toEqual(PT512)
      cipher.dispose()
    })

    it.each(NIST.map((v) => [v.key.length * 4, v] as const))("NIST SP 800-38A ECB and CBC, AES-%i", (_bits, v) => {
      const engine = backend.aes(hex(v.key))
      const ct = engine.encryptBlocks(hex(NIST_PT))
      expect(toHex(ct)).toBe(v.ecb)
      expect(toHex(engine.decryptBlocks(ct.slice()))).toBe(NIST_PT)
      // One chain, and 13 chains (enough for node's interleaved path).
      for (const count of [1, 13]) {
        const ivs = new Uint8Array(16 * count)
        const chains = new Uint8Array(64 * count)
        for (let c = 0; c < count; c++) {
          ivs.set(hex(NIST_IV), c * 16)
          chains.set(hex(NIST_PT), c * 64)
        }
        engine.cbcEncryptChains(ivs, chains, 64, count)
        for (let c = 0; c < count; c++) expect(toHex(chains.subarray(c * 64, c * 64 + 64))).toBe(v.cbc)
      }
      engine.dispose()
    })

    it.each(PBKDF2)("PBKDF2-HMAC-$hash c=$c", async (v) => {
      const enc = new TextEncoder()
      const out = await backend.pbkdf2(v.hash, enc.encode("password"), enc.encode("salt"), v.c, v.len)
      expect(toHex(out)).toBe(v.out)
    })

    it("hashes: sha256('abc'), sha1('abc'), md5('abc'), ripemd160('abc')", () => {
      const abc = new TextEncoder().encode("abc")
      expect(toHex(backend.digest("sha256", [abc]))).toBe(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
      )
      expect(toHex(backend.digest("sha1", [abc.subarray(0, 1), abc.subarray(1)]))).toBe(
        "a9993e364706816aba3e25717850c26c9cd0d89d"
      )
      expect(toHex(backend.digest("md5", [abc]))).toBe("900150983cd24fb0d6963f7d28e17f72")
      expect(toHex(backend.digest("ripemd160", [abc]))).toBe("8eb208f7e05d987a9b044a8e98c6b087f15a0bfc")
    })
  })
}
