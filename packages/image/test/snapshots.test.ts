import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { openImage } from "../src/index.js"
import { pattern, qemuCheck, qemuImg, runNode, tempDir } from "./helpers.js"

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
