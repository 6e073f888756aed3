/**
 * `convert()` against qemu-img: qcow2/raw targets compare equal and check
 * clean, progress reaches the total, and an abort rejects with AbortError
 * leaving no file open.
 */
import { statSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { convert, create, open, AbortError, Qcow2Error, type ConvertProgress } from "../src/index.js"
import { openFds, qemuCheck, qemuCompare, qemuImg, qemuIo, tempDir } from "./helpers.js"

const MiB = 2 ** 20

describe("convert", () => {
  const tmp = tempDir()
  const source = tmp.path("source.qcow2")

  beforeAll(() => {
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=16k", source, "24M")
    qemuIo(
      "-f", "qcow2",
      "-c", "write -P 0x01 0 3M",
      "-c", "write -P 0x02 5000 7000",
      "-c", "write -c -P 0x03 8M 64k",
      "-c", "write -z 1M 128k",
      "-c", "write -P 0x04 20M 1M",
      "-c", "write -P 0x05 25165312 512",
      source
    )
  })
  afterAll(() => tmp.cleanup())

  it("to raw (the default), sparse where the source is zero, with progress up to the total", async () => {
    const target = tmp.path("out.raw")
    const seen: ConvertProgress[] = []
    await convert(source, target, { onProgress: (p) => seen.push(p) })
    expect(qemuCompare("-F", "raw", source, target)).toBe(0)
    expect(statSync(target).size).toBe(24 * MiB)
    expect(statSync(target).blocks * 512).toBeLessThan(12 * MiB)
    expect(seen.at(-1)).toEqual({ bytesDone: 24 * MiB, bytesTotal: 24 * MiB })
    expect(seen.every((p, i) => i === 0 || p.bytesDone > seen[i - 1]!.bytesDone)).toBe(true)
  })

  it("to qcow2 with -o options, and compressed (zlib and zstd)", async () => {
    const plain = tmp.path("out.qcow2")
    await convert(source, plain, { outFormat: "qcow2", targetOptions: { clusterSize: 4096, lazyRefcounts: true } })
    expect(qemuCheck(plain).exitCode).toBe(0)
    expect(qemuCompare(source, plain)).toBe(0)
    expect(JSON.parse(qemuImg("info", "--output=json", plain))).toMatchObject({
      "cluster-size": 4096,
      "format-specific": { data: { "lazy-refcounts": true } }
    })
    for (const compressionType of ["zlib", "zstd"] as const) {
      const packed = tmp.path(`out-${compressionType}.qcow2`)
      await convert(source, packed, { outFormat: "qcow2", compress: true, targetOptions: { compressionType } })
      const check = qemuCheck(packed)
      expect(check.exitCode).toBe(0)
      expect(check["compressed-clusters"]).toBeGreaterThan(0)
      expect(qemuCompare(source, packed)).toBe(0)
    }
  })

  it("to an encrypted qcow2 target, read back with its passphrase", async () => {
    const target = tmp.path("out-enc.qcow2")
    await convert(source, target, { outFormat: "qcow2", targetOptions: { encrypt: { passphrase: "pw", slotIterations: 1000, masterKeyIterations: 1000 } } })
    await using img = await open(target, { passphrase: "pw", readOnly: true })
    await using src = await open(source, { readOnly: true })
    expect(Buffer.from(await img.read(20 * MiB, MiB)).equals(Buffer.from(await src.read(20 * MiB, MiB)))).toBe(true)
  })

  it("rejects options qemu-img refuses", async () => {
    await expect(convert(source, tmp.path("x.raw"), { compress: true })).rejects.toMatchObject({ reason: "InvalidArgument" })
    await expect(convert(source, tmp.path("x.raw"), { parallel: 0 })).rejects.toMatchObject({ reason: "InvalidArgument" })
  })

  it("an abort rejects with AbortError, closes every file, and leaves a consistent target", async () => {
    const big = tmp.path("big.qcow2")
    await create(big, { size: 256 * MiB })
    {
      await using img = await open(big)
      const chunk = new Uint8Array(MiB).fill(0x5a)
      for (let at = 0; at < 256 * MiB; at += 8 * MiB) await img.write(at, chunk)
    }
    const fdsBefore = openFds()
    const target = tmp.path("aborted.qcow2")
    const controller = new AbortController()
    let reports = 0
    const result = await convert(big, target, {
      outFormat: "qcow2",
      compress: true,
      parallel: 2,
      signal: controller.signal,
      onProgress: () => {
        reports++
        if (reports === 2) controller.abort()
      }
    }).catch((e: unknown) => e)
    expect(result).toBeInstanceOf(AbortError)
    expect(result).toBeInstanceOf(Qcow2Error)
    expect(result).toMatchObject({ name: "AbortError", _tag: "AbortError" })
    expect(reports).toBeLessThan(128)
    expect(openFds()).toBe(fdsBefore)
    expect(qemuCheck(target).exitCode).toBe(0)

    // An already aborted signal rejects before anything is opened or created.
    const early = await convert(big, tmp.path("never.qcow2"), { signal: AbortSignal.abort() }).catch((e: unknown) => e)
    expect(early).toBeInstanceOf(AbortError)
    expect(() => statSync(tmp.path("never.qcow2"))).toThrow()
  })
})
