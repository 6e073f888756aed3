import { execFileSync } from "node:child_process"
import { copyFileSync, readFileSync, writeFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuImg, qemuIo, runNode, tempDir } from "./helpers.js"

const tmp = tempDir()
afterAll(() => tmp.cleanup())

describe("writing to images with internal snapshots", () => {
  for (const options of ["", "refcount_bits=2", "extended_l2=on", "cluster_size=4096"]) {
    it(`copy-on-write of shared L2 tables and data clusters keeps the snapshot intact (${options || "defaults"})`, async () => {
      const file = tmp.path(`snap${options.replace(/[^a-z0-9]/g, "")}.qcow2`)
      const size = 4 << 20
      qemuImg("create", "-f", "qcow2", ...(options ? ["-o", options] : []), file, String(size))
      execFileSync("qemu-io", ["-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 2M 512k", "-c", "write -c -P 0x33 3M 64k", file])
      qemuImg("snapshot", "-c", "before", file)
      const snapshotRaw = tmp.path("before.raw")
      qemuImg("convert", "-l", "snapshot.name=before", "-O", "raw", file, snapshotRaw)
      const expectedSnapshot = readFileSync(snapshotRaw)
      const model = new Uint8Array(expectedSnapshot)
      await runNode(
        Effect.gen(function* () {
          const image = yield* openImage(file)
          expect(image.snapshots.map((s) => s.name)).toEqual(["before"])
          for (const [offset, length, seed] of [[1000, 5000, 1], [512 * 1024, 700 * 1024, 2], [3 << 20, 4096, 3], [(2 << 20) + 100, 64, 4]] as const) {
            const data = pattern(length, seed)
            yield* image.write(offset, data)
            model.set(data, offset)
          }
          yield* image.discard(2 << 20, 128 * 1024)
          model.fill(0, 2 << 20, (2 << 20) + 128 * 1024)
          yield* image.writeZeroes(100 * 1024, 200 * 1024)
          model.fill(0, 100 * 1024, 300 * 1024)
        })
      )
      expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
      const active = tmp.path("active.raw")
      qemuImg("convert", "-O", "raw", file, active)
      expect(Buffer.compare(readFileSync(active), Buffer.from(model))).toBe(0)
      const after = tmp.path("after.raw")
      qemuImg("convert", "-l", "snapshot.name=before", "-O", "raw", file, after)
      expect(Buffer.compare(readFileSync(after), expectedSnapshot)).toBe(0)
    })
  }
})

describe("refcounts zeroed under live clusters", () => {
  it("a write continues its host range after the in-place part like QEMU, so it lands where qemu-io's does and both snapshots survive", async () => {
    // Host clusters: 4 L2 of s1, 5-6 data of s1/s2/active (refcount 3),
    // 7 L1 of s1, 8 active L2, ..., 13 guest 0 (owned, the last cluster).
    const base = tmp.path("zeroref.qcow2")
    qemuImg("create", "-f", "qcow2", base, "4M")
    qemuIo("-c", "write -P 0x11 3968k 128k", base)
    qemuImg("snapshot", "-c", "s1", base)
    qemuIo("-c", "write -P 0x22 256k 64k", base)
    qemuImg("snapshot", "-c", "s2", base)
    qemuIo("-c", "write -P 0x33 0 64k", base)
    const bytes = readFileSync(base)
    const refblock = Number(bytes.readBigUInt64BE(Number(bytes.readBigUInt64BE(48))))
    const cs = 65536
    expect(bytes.length).toBe(14 * cs)
    expect([5, 6, 7, 8].map((c) => bytes.readUInt16BE(refblock + 2 * c))).toEqual([3, 3, 1, 1])
    bytes.fill(0, refblock + 2 * 5, refblock + 2 * 9)
    const contents = (file: string) =>
      [[], ["-l", "snapshot.name=s1"], ["-l", "snapshot.name=s2"]].map((l) => {
        const raw = tmp.path("zeroref.raw")
        qemuImg("convert", ...l, "-O", "raw", file, raw)
        return readFileSync(raw).subarray(128 * 1024)
      })
    const ours = tmp.path("zeroref-ours.qcow2")
    const theirs = tmp.path("zeroref-qemu.qcow2")
    writeFileSync(ours, bytes)
    copyFileSync(ours, theirs)
    const before = contents(ours)

    qemuIo("-c", "write -P 0x77 0 128k", theirs)
    await runNode(
      Effect.gen(function* () {
        const image = yield* openImage(ours)
        yield* image.write(0, new Uint8Array(128 * 1024).fill(0x77))
      })
    )
    // qemu-io puts guest 64k at cluster 14, right after guest 0's cluster 13,
    // not at the first cluster counted free (5, still live).
    const same = (after: ReadonlyArray<Buffer>) => after.map((c, i) => Buffer.compare(c, before[i]!) === 0)
    expect(same(contents(theirs))).toEqual([true, true, true])
    expect(same(contents(ours))).toEqual([true, true, true])
    expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0)
  })
})
