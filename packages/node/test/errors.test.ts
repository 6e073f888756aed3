/**
 * The errors of the Promise API: instances of the exported classes with
 * the Effect API's `_tag` and `reason`, for damaged images, bad requests
 * and closed handles.
 */
import { closeSync, existsSync, openSync, readSync, writeFileSync, writeSync } from "node:fs"
import { afterAll, describe, expect, it } from "vitest"
import { ImageError as EffectImageError } from "@qcow2/image"
import { convert, create, open, ImageClosedError, ImageError, NoSpaceError, Qcow2Error, WrongPassphraseError } from "../src/index.js"
import { fromImageError } from "../src/internal/runtime.js"
import { qemuCheck, qemuIo, qemuImg, tempDir } from "./helpers.js"

/** What a promise rejects with (fails the test if it resolves). */
const rejection = async (promise: Promise<unknown>): Promise<unknown> => {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error("expected a rejection")
}

const readU64 = (path: string, at: number): bigint => {
  const fd = openSync(path, "r")
  const buf = Buffer.alloc(8)
  readSync(fd, buf, 0, 8, at)
  closeSync(fd)
  return buf.readBigUInt64BE()
}

const writeU64 = (path: string, at: number, value: bigint): void => {
  const fd = openSync(path, "r+")
  const buf = Buffer.alloc(8)
  buf.writeBigUInt64BE(value)
  writeSync(fd, buf, 0, 8, at)
  closeSync(fd)
}

describe("errors", () => {
  const tmp = tempDir()
  afterAll(() => tmp.cleanup())

  it("a damaged L1 entry: reading the cluster rejects with reason Corrupt", async () => {
    const path = tmp.path("corrupt.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", path, "1M")
    qemuIo("-f", "qcow2", "-c", "write -P 1 0 64k", path)
    const l1 = Number(readU64(path, 40))
    // An L2 table offset that is not cluster aligned (qcow2.txt: bits 9-55 must be aligned).
    writeU64(path, l1, (1n << 63n) | 0x10200n)
    await using img = await open(path, { readOnly: true })
    const e = await rejection(img.read(0, 4096))
    expect(e).toBeInstanceOf(ImageError)
    expect(e).toMatchObject({ _tag: "ImageError", reason: "Corrupt", location: path })
  })

  it("an unknown incompatible feature rejects the open with reason Unsupported", async () => {
    const path = tmp.path("feature.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", path, "1M")
    writeU64(path, 72, 1n << 40n)
    expect(await rejection(open(path))).toMatchObject({ _tag: "ImageError", reason: "Unsupported" })
  })

  it("a file that is not qcow2, opened as qcow2, rejects with reason NotQcow2", async () => {
    const path = tmp.path("plain.raw")
    writeFileSync(path, Buffer.alloc(65536, 7))
    expect(await rejection(open(path, { format: "qcow2" }))).toMatchObject({ _tag: "ImageError", reason: "NotQcow2" })
  })

  it("a missing file, a missing backing file, a read-only image and a range past the end", async () => {
    const missing = await rejection(open(tmp.path("nope.qcow2")))
    expect(missing).toBeInstanceOf(ImageError)
    expect(missing).toMatchObject({ reason: "Storage", errno: "ENOENT", message: expect.stringContaining("No such file or directory") })

    const top = tmp.path("orphan.qcow2")
    await create(tmp.path("gone.qcow2"), { size: 1 << 20 })
    await create(top, { backingFile: "gone.qcow2", backingFormat: "qcow2" })
    qemuImg("rebase", "-u", "-b", "really-gone.qcow2", "-F", "qcow2", top)
    expect(await rejection(open(top))).toMatchObject({ reason: "BackingChain" })

    await using img = await open(tmp.path("gone.qcow2"), { readOnly: true })
    expect(await rejection(img.write(0, new Uint8Array(512)))).toMatchObject({ _tag: "ImageError", reason: "ReadOnly" })
    expect(await rejection(img.read(img.virtualSize - 100, 200))).toMatchObject({ reason: "InvalidArgument" })
    expect(await rejection(img.read(0, 2 ** 60))).toMatchObject({ reason: "InvalidArgument" })
  })

  it("close() twice is harmless; a closed image rejects with ImageClosedError", async () => {
    const path = tmp.path("closed.qcow2")
    await create(path, { size: 1 << 20 })
    const img = await open(path)
    const pending = img.write(0, new Uint8Array(4096).fill(3))
    await Promise.all([img.close(), img.close()])
    await pending
    await img.close()
    for (const call of [() => img.read(0, 1), () => img.write(0, new Uint8Array(1)), () => img.flush(), () => img.info()]) {
      const e = await rejection(call())
      expect(e).toBeInstanceOf(ImageClosedError)
      expect(e).toBeInstanceOf(Qcow2Error)
      expect(e).toMatchObject({ _tag: "ImageClosedError", location: path })
    }
    // The write in flight when close() was called landed.
    await using again = await open(path)
    expect((await again.read(0, 4096)).every((b) => b === 3)).toBe(true)
  })

  it("a full disk: a write to an image whose data file is /dev/full rejects with NoSpaceError (errno ENOSPC), and the image stays consistent", async () => {
    const path = tmp.path("full.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", `data_file=${tmp.path("full.data")}`, path, "1M")
    qemuImg("amend", "-o", "data_file=/dev/full", path)
    const img = await open(path)
    const e = await rejection(img.write(0, new Uint8Array(65536).fill(1)))
    expect(e).toBeInstanceOf(NoSpaceError)
    expect(e).toMatchObject({ _tag: "ImageError", reason: "Storage", errno: "ENOSPC" })
    // fsync of /dev/full fails (EINVAL); close() still closes every file.
    await rejection(img.close())
    expect(img.closed).toBe(true)
    expect(qemuCheck(path).exitCode).toBe(0)
  })

  it("arguments only a JavaScript caller can get wrong reject with reason InvalidArgument and qemu-img's words", async () => {
    const path = tmp.path("args.qcow2")
    await create(path, { size: 1 << 20 })
    const invalid = (message: string) => ({ _tag: "ImageError", reason: "InvalidArgument", message })
    // Casts stand for untyped callers.
    expect(await rejection(create(tmp.path("x.vmdk"), { format: "vmdk" as "raw", size: 1 << 20 }))).toMatchObject(invalid(`${tmp.path("x.vmdk")}: Unknown file format 'vmdk'`))
    expect(existsSync(tmp.path("x.vmdk"))).toBe(false)
    expect(await rejection(open(path, { format: "vmdk" as "raw" }))).toMatchObject(invalid(`Could not open '${path}': Unknown driver 'vmdk'`))
    expect(await rejection(convert(path, tmp.path("y"), { format: "vmdk" as "raw" }))).toMatchObject(invalid(`Could not open '${path}': Unknown driver 'vmdk'`))
    expect(await rejection(convert(path, tmp.path("y"), { outFormat: "vmdk" as "raw" }))).toMatchObject(invalid("Unknown file format 'vmdk'"))
    expect(existsSync(tmp.path("y"))).toBe(false)
    await using img = await open(path)
    expect(await rejection(img.write(0, "text" as unknown as Uint8Array))).toMatchObject(invalid("expected a Uint8Array"))
    expect(await rejection(img.writeCompressed(0, [1, 2] as unknown as Uint8Array))).toMatchObject(invalid("expected a Uint8Array"))
    expect(await rejection(img.readInto(0, new ArrayBuffer(8) as unknown as Uint8Array))).toMatchObject(invalid("expected a Uint8Array"))
    expect(await rejection(img.check({ repair: "some" as "all" }))).toMatchObject(invalid("Unknown option value for -r (expecting 'leaks' or 'all'): some"))
  })

  it("picks the class by reason, errno and cause", () => {
    const full = fromImageError(new EffectImageError({ reason: "Storage", message: "write failed: ENOSPC", errno: "ENOSPC" }))
    expect(full).toBeInstanceOf(NoSpaceError)
    expect(full).toMatchObject({ _tag: "ImageError", reason: "Storage", errno: "ENOSPC" })
    expect(fromImageError(new EffectImageError({ reason: "NoSpace", message: "host offset limit" }))).toBeInstanceOf(NoSpaceError)
    const badKey = new EffectImageError({
      reason: "Encryption",
      message: "Invalid password, cannot unlock any keyslot",
      cause: { _tag: "CryptoError", reason: "BadPassphrase" }
    })
    expect(fromImageError(badKey)).toBeInstanceOf(WrongPassphraseError)
    const other = fromImageError(new EffectImageError({ reason: "Corrupt", message: "bad", location: "x", offset: 512 }))
    expect(other.constructor).toBe(ImageError)
    expect(other).toMatchObject({ name: "ImageError", reason: "Corrupt", location: "x", offset: 512 })
  })
})
