/**
 * QEMU as the oracle: LUKS and legacy AES qcow2 images made by qemu-img and
 * written by qemu-io are decrypted here, and LUKS headers / sectors made here
 * are read by qemu-io.
 *
 * Finding recorded here (QEMU 7.2): the IV sector for LUKS payload data in
 * qcow2 is the HOST offset / 512 (the position in the image file), while for
 * legacy AES it is the GUEST offset / 512. The tests decrypt with both and
 * check that only that choice yields the pattern.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import { Effect, Exit } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { makeSectorCipherFactory, portableBackend, type SectorCipherFactoryShape } from "../src/index.js"
import { nodeBackend } from "../src/node.js"
import { expectBytes, expectCryptoError } from "./helpers.js"
import { readQcow2File } from "./qcow2-file.js"

const hasQemu = (() => {
  try {
    execFileSync("qemu-img", ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-crypto-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const node = makeSectorCipherFactory(nodeBackend)
const portable = makeSectorCipherFactory(portableBackend)
const SECRET = "abc123"
const secretArgs = (secret: string) => ["--object", `secret,id=sec0,data=${secret}`]
const imageOpts = (file: string) => ["--image-opts", `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`]

const qemuImgCreate = (file: string, options: string, secret = SECRET, size = "4M") => {
  runQemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, ...secretArgs(secret), file, size])
}

const qemuIo = (file: string, commands: ReadonlyArray<string>, secret = SECRET): string =>
  execFileSync("qemu-io", [...secretArgs(secret), ...imageOpts(file), ...commands.flatMap((c) => ["-c", c])], {
    encoding: "utf8"
  })

const luksArea = (file: Uint8Array) => {
  const q = readQcow2File(file)
  expect(q.image.header.cryptMethod).toBe(2)
  const fde = q.image.extensions.fullDiskEncryption
  expect(fde).toBeDefined()
  return file.slice(fde!.offset, fde!.offset + fde!.length)
}

const open = (f: SectorCipherFactoryShape, area: Uint8Array, passphrase = SECRET) =>
  Effect.runPromise(f.openLuks(area, passphrase))

const filled = (n: number, byte: number) => new Uint8Array(n).fill(byte)

const LUKS_VARIANTS: ReadonlyArray<readonly [string, string]> = [
  ["default aes-256-xts-plain64 sha256", ""],
  ["aes-128-xts", "encrypt.cipher-alg=aes-128"],
  ["aes-192-xts", "encrypt.cipher-alg=aes-192"],
  ["aes-128-cbc-essiv:sha256", "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv"],
  ["aes-256-cbc-plain", "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain"],
  ["aes-256-cbc-plain64 sha1", "encrypt.cipher-mode=cbc,encrypt.hash-alg=sha1"],
  ["aes-256-ctr-plain64", "encrypt.cipher-mode=ctr"],
  ["aes-256-ecb", "encrypt.cipher-mode=ecb"],
  ["xts sha512", "encrypt.hash-alg=sha512"],
  ["xts sha384", "encrypt.hash-alg=sha384"],
  ["xts sha224", "encrypt.hash-alg=sha224"],
  ["xts md5", "encrypt.hash-alg=md5"],
  ["xts ripemd160", "encrypt.hash-alg=ripemd160"]
]

describe.skipIf(!hasQemu)("LUKS images written by qemu-img/qemu-io", () => {
  it.each(LUKS_VARIANTS)("%s: unlock the header and decrypt qemu-io's data", async (label, extra) => {
    const file = path.join(dir, `luks-${label.replace(/[^a-z0-9]+/gi, "_")}.qcow2`)
    qemuImgCreate(file, `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10${extra ? `,${extra}` : ""}`)
    qemuIo(file, ["write -P 0xa5 3M 64k", "write -P 0x5a 512 1024"])
    const bytes = new Uint8Array(fs.readFileSync(file))
    const q = readQcow2File(bytes)
    const area = luksArea(bytes)
    const factories = label.startsWith("default") ? [node, portable] : [node]
    for (const f of factories) {
      const { cipher, header } = await open(f, area)
      expect(q.image.extensions.fullDiskEncryption!.length).toBe(header.payloadOffset * 512)
      const host = q.hostCluster(3 * 1024 * 1024)!
      expect(host).not.toBe(3 * 1024 * 1024)
      const cluster = bytes.slice(host, host + 65536)
      const viaGuest = cluster.slice()
      cipher.decrypt(host / 512, cluster)
      expectBytes(cluster, filled(65536, 0xa5))
      if (header.cipherMode !== "ecb-plain64") {
        // ECB ignores the IV; every other mode shows that the guest sector is wrong.
        cipher.decrypt((3 * 1024 * 1024) / 512, viaGuest)
        expect(Buffer.from(viaGuest).equals(Buffer.from(filled(65536, 0xa5)))).toBe(false)
      }

      const host0 = q.hostCluster(0)!
      const c0 = bytes.slice(host0, host0 + 65536)
      cipher.decrypt(host0 / 512, c0)
      const want = new Uint8Array(65536)
      want.fill(0x5a, 512, 1536)
      expectBytes(c0, want)
      cipher.dispose()
    }
    const exit = await Effect.runPromiseExit(node.openLuks(area, "not-the-passphrase"))
    expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/CryptoError.*Invalid passphrase/)
  })

  it("a LUKS area created here is accepted by qemu-img info and qemu-io, both directions of data", async () => {
    for (const [label, qemuOptions, ours] of [
      ["xts", "", {}],
      [
        "cbc-essiv",
        "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv",
        { cipherAlg: "aes-128", cipherMode: "cbc", ivgenAlg: "essiv" }
      ]
    ] as const) {
      const file = path.join(dir, `ours-${label}.qcow2`)
      qemuImgCreate(file, `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10${qemuOptions ? `,${qemuOptions}` : ""}`)
      const bytes = new Uint8Array(fs.readFileSync(file))
      const q = readQcow2File(bytes)
      const created = await Effect.runPromise(
        node.createLuks({ passphrase: "our-secret", slotIterations: 5000, masterKeyIterations: 1000, ...ours })
      )
      expect(created.area.length).toBe(q.image.extensions.fullDiskEncryption!.length)
      bytes.set(created.area, q.image.extensions.fullDiskEncryption!.offset)
      fs.writeFileSync(file, bytes)

      const info = JSON.parse(
        execFileSync(
          "qemu-img",
          ["info", "--output=json", ...secretArgs("our-secret"), ...imageOpts(file)],
          { encoding: "utf8" }
        )
      )
      const enc = info["format-specific"].data.encrypt
      expect(enc.uuid).toBe(created.header.uuid)
      expect(enc.slots[0].iters).toBe(5000)
      expect(enc["master-key-iters"]).toBe(1000)
      expect(enc["payload-offset"]).toBe(created.header.payloadOffset * 512)

      // QEMU writes with our master key; we decrypt.
      expect(qemuIo(file, ["write -P 0x3c 1M 64k"], "our-secret")).toMatch(/wrote 65536/)
      const after = new Uint8Array(fs.readFileSync(file))
      const host = readQcow2File(after).hostCluster(1024 * 1024)!
      const cluster = after.slice(host, host + 65536)
      created.cipher.decrypt(host / 512, cluster)
      expectBytes(cluster, filled(65536, 0x3c))

      // We write; QEMU reads.
      const mine = filled(65536, 0xc3)
      created.cipher.encrypt(host / 512, mine)
      after.set(mine, host)
      fs.writeFileSync(file, after)
      const out = qemuIo(file, ["read -P 0xc3 1M 64k"], "our-secret")
      expect(out).toMatch(/read 65536/)
      expect(out).not.toMatch(/Pattern verification failed/)
      expect(() => qemuIo(file, ["read 0 512"], SECRET)).toThrow(/Invalid password/)
    }
  })
})

describe.skipIf(!hasQemu)("legacy AES images (crypt_method 1)", () => {
  it.each([
    ["abc", "short passphrase"],
    ["0123456789abcdefTAIL", "passphrase longer than 16 bytes"]
  ])("%s (%s): decrypt qemu-io data with guest sectors; qemu-io reads ours", async (secret) => {
    const file = path.join(dir, `aes-${secret.length}.qcow2`)
    qemuImgCreate(file, "encrypt.format=aes,encrypt.key-secret=sec0", secret)
    qemuIo(file, ["write -P 0x5a 3M 64k", "write -P 0x77 512 1024"], secret)
    const bytes = new Uint8Array(fs.readFileSync(file))
    const q = readQcow2File(bytes)
    expect(q.image.header.cryptMethod).toBe(1)
    for (const f of [node, portable]) {
      const cipher = f.legacyAes(secret)
      const host = q.hostCluster(3 * 1024 * 1024)!
      expect(host).not.toBe(3 * 1024 * 1024)
      const cluster = bytes.slice(host, host + 65536)
      const viaHost = cluster.slice()
      cipher.decrypt((3 * 1024 * 1024) / 512, cluster)
      expectBytes(cluster, filled(65536, 0x5a))
      cipher.decrypt(host / 512, viaHost)
      expect(Buffer.from(viaHost).equals(Buffer.from(filled(65536, 0x5a)))).toBe(false)
      const host0 = q.hostCluster(0)!
      const c0 = bytes.slice(host0, host0 + 65536)
      cipher.decrypt(0, c0)
      const want = new Uint8Array(65536)
      want.fill(0x77, 512, 1536)
      expectBytes(c0, want)
    }
    const mine = filled(65536, 0x42)
    node.legacyAes(secret).encrypt((3 * 1024 * 1024) / 512, mine)
    bytes.set(mine, q.hostCluster(3 * 1024 * 1024)!)
    fs.writeFileSync(file, bytes)
    const out = qemuIo(file, ["read -P 0x42 3M 64k"], secret)
    expect(out).toMatch(/read 65536/)
    expect(out).not.toMatch(/Pattern verification failed/)
  })
})

describe.skipIf(!hasQemu)("BadPassphrase", () => {
  it("is a CryptoError of reason BadPassphrase", async () => {
    const file = path.join(dir, "bad.qcow2")
    qemuImgCreate(file, "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")
    const area = luksArea(new Uint8Array(fs.readFileSync(file)))
    const exit = await Effect.runPromiseExit(portable.openLuks(area, "nope"))
    expect(Exit.isFailure(exit)).toBe(true)
    if (Exit.isFailure(exit)) {
      const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
      expectCryptoError(fail && fail._tag === "Fail" ? fail.error : undefined, "BadPassphrase")
    }
  })
})
