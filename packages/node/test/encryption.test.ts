/**
 * Encrypted images through the Promise API, checked with qemu-img: LUKS
 * inside qcow2 both ways, raw LUKS volumes, and the typed wrong-passphrase
 * error.
 */
import { afterAll, describe, expect, it } from "vitest"
import { create, open, ImageError, Qcow2Error, WrongPassphraseError } from "../src/index.js"
import { pattern, qemuCheck, qemuImg, qemuIo, qemuRaw, sameBytes, secretArgs, tempDir } from "./helpers.js"

const MiB = 2 ** 20
const PASSPHRASE = "correct horse"
// Short PBKDF2 work keeps the tests fast; the key derivation is the same.
const iterTime = 10
const fixed = { slotIterations: 1000, masterKeyIterations: 1000 }

describe("encryption", () => {
  const tmp = tempDir()
  afterAll(() => tmp.cleanup())

  it("creates a LUKS qcow2 image that qemu-img checks and decrypts to the bytes written", async () => {
    const path = tmp.path("enc.qcow2")
    await create(path, { size: 4 * MiB, encrypt: { passphrase: PASSPHRASE, ...fixed } })
    const data = pattern(300_000, 5)
    {
      await using img = await open(path, { passphrase: PASSPHRASE })
      await img.write(12345, data)
      expect((await img.info())["format-specific"]).toMatchObject({ type: "qcow2", data: { encrypt: { format: "luks", "cipher-alg": "aes-256" } } })
    }
    const opts = `driver=qcow2,file.filename=${path},encrypt.key-secret=sec0`
    expect(qemuCheck(...secretArgs(PASSPHRASE), "--image-opts", opts).exitCode).toBe(0)
    const raw = qemuRaw(opts, tmp.path("enc.raw"), ...secretArgs(PASSPHRASE), "--image-opts")
    expect(sameBytes(raw.subarray(12345, 12345 + data.length), data)).toBe(true)
    expect(raw.subarray(0, 12345).every((b) => b === 0)).toBe(true)
  })

  it("reads a LUKS qcow2 image qemu-img made and qemu-io wrote", async () => {
    const path = tmp.path("qemu-enc.qcow2")
    qemuImg("create", "-q", ...secretArgs(PASSPHRASE), "-f", "qcow2", "-o", `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=${iterTime}`, path, "2M")
    qemuIo(...secretArgs(PASSPHRASE), "--image-opts", "-c", "write -P 0x5a 64k 100k", `driver=qcow2,file.filename=${path},encrypt.key-secret=sec0`)
    await using img = await open(path, { passphrase: new TextEncoder().encode(PASSPHRASE), readOnly: true })
    const got = await img.read(0, 2 * MiB)
    expect(got.subarray(64 * 1024, 164 * 1024).every((b) => b === 0x5a)).toBe(true)
    expect(got.subarray(0, 64 * 1024).every((b) => b === 0)).toBe(true)
  })

  it("rejects a wrong passphrase with WrongPassphraseError (reason Encryption) and a missing one with ImageError", async () => {
    const path = tmp.path("enc.qcow2")
    const wrong = await open(path, { passphrase: "wrong horse" }).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(wrong).toBeInstanceOf(WrongPassphraseError)
    expect(wrong).toBeInstanceOf(ImageError)
    expect(wrong).toBeInstanceOf(Qcow2Error)
    expect(wrong).toBeInstanceOf(Error)
    expect(wrong).toMatchObject({ _tag: "ImageError", reason: "Encryption", name: "WrongPassphraseError", message: "Invalid password, cannot unlock any keyslot" })

    const missing = await open(path).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(missing).toBeInstanceOf(ImageError)
    expect(missing).not.toBeInstanceOf(WrongPassphraseError)
    expect(missing).toMatchObject({ _tag: "ImageError", reason: "Encryption" })
  })

  it("creates raw LUKS volumes qemu-io reads, and opens them with their passphrase", async () => {
    const path = tmp.path("vol.luks")
    await create(path, { format: "luks", size: MiB, passphrase: PASSPHRASE, ...fixed })
    expect(JSON.parse(qemuImg("info", "--output=json", path))).toMatchObject({ format: "luks", "virtual-size": MiB, encrypted: true })
    {
      await using img = await open(path, { passphrase: PASSPHRASE })
      expect(img.format).toBe("luks")
      await img.write(4096, new Uint8Array(8192).fill(0x77))
    }
    const out = qemuIo(...secretArgs(PASSPHRASE), "--image-opts", "-c", "read -P 0x77 4096 8192", `driver=luks,file.filename=${path},key-secret=sec0`)
    expect(out).toContain("read 8192/8192 bytes at offset 4096")
    await expect(open(path, { passphrase: "nope" })).rejects.toBeInstanceOf(WrongPassphraseError)
  })
})
