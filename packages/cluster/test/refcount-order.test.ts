/**
 * changeRefcountOrder (qemu-img amend -o refcount_bits=N) against the
 * oracle: images made and filled by qemu-img/qemu-io at a random refcount
 * width, changed to random widths one after another, stay clean for
 * `qemu-img check`, identical in content for `qemu-img compare`, and show
 * the new width in `qemu-img info`; a change is refused exactly when
 * `qemu-img amend` refuses it on a copy, with the same message, and a
 * refused change leaves the image untouched.
 */
import { spawnSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { Effect } from "effect"
import { decodeImageHeader } from "@qcow2/format"
import { makeMemoryStorage } from "@qcow2/storage"
import { changeRefcountOrder } from "../src/index.js"
import { fail, qemuCheck, qemuImg, qemuIo, run, scratch } from "./engine.js"

const dir = scratch()
afterAll(() => dir.cleanup())

/**
 * Applies one width change to the file at `path` in memory and writes the
 * result back; returns the refusal message when the change is refused.
 */
async function amendWidth(path: string, order: number): Promise<string | undefined> {
  const file = new Uint8Array(readFileSync(path))
  const storage = makeMemoryStorage({ name: path, initial: file })
  const image = decodeImageHeader(file.subarray(0, 2 ** new DataView(file.buffer).getUint32(20)))
  const outcome = await run(Effect.result(changeRefcountOrder(storage, image, order)))
  if (outcome._tag === "Failure") return outcome.failure.message
  const out = new Uint8Array(await run(storage.size()))
  await run(storage.read(0, out))
  writeFileSync(path, out)
  return undefined
}

/** What qemu-img amend says to the same change ("" when it succeeds). */
const qemuAmend = (path: string, order: number): string => {
  const r = spawnSync("qemu-img", ["amend", "-o", `refcount_bits=${2 ** order}`, path], { encoding: "utf8" })
  return r.status === 0 ? "" : r.stderr.replace(/^qemu-img: /, "").trim()
}

const refcountBits = (path: string): number => JSON.parse(qemuImg("info", "--output=json", path))["format-specific"].data["refcount-bits"]

describe("refcount width changes", () => {
  it("keep content and consistency for any width to any width (property)", async () => {
    let n = 0
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 6 }),
        fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 3 }),
        // qemu-img amend takes minutes on 64 KiB clusters with narrow refcounts (huge refcount blocks): small clusters keep the oracle fast.
        fc.constantFrom(512, 1024, 4096),
        fc.array(fc.record({ cluster: fc.integer({ min: 0, max: 63 }), count: fc.integer({ min: 1, max: 4 }), kind: fc.constantFrom("data", "zero", "compressed") }), { maxLength: 6 }),
        async (from, to, cs, writes) => {
          const orig = dir.path(`p${n}.orig.qcow2`)
          const img = dir.path(`p${n++}.qcow2`)
          qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs},refcount_bits=${2 ** from}`, orig, String(64 * cs))
          // Compressed writes go to fresh clusters (48 + i): qemu-io refuses them over allocated ones.
          const cmds = writes.flatMap((w, i) => {
            if (w.kind === "compressed") return ["-c", `write -c -P ${i + 1} ${(48 + i) * cs} ${cs}`]
            const cluster = w.cluster % 48
            const off = cluster * cs
            const len = Math.min(w.count, 48 - cluster) * cs
            return ["-c", w.kind === "zero" ? `write -z ${off} ${len}` : `write -P ${i + 1} ${off} ${len}`]
          })
          if (cmds.length > 0) qemuIo(...cmds, orig)
          writeFileSync(img, readFileSync(orig))
          const oracle = dir.path(`p${n}.qemu.qcow2`)
          writeFileSync(oracle, readFileSync(orig))
          let width = 2 ** from
          for (const order of to) {
            const refused = await amendWidth(img, order)
            expect(refused ?? "").toBe(qemuAmend(oracle, order))
            if (refused !== undefined) break
            width = 2 ** order
          }
          const check = qemuCheck(img)
          expect(check.exitCode).toBe(0)
          expect(refcountBits(img)).toBe(width)
          expect(qemuImg("compare", "-f", "qcow2", "-F", "qcow2", orig, img)).toContain("Images are identical.")
        }
      ),
      { numRuns: 12, seed: 20261206 }
    )
  }, 120_000)

  it("refuses a narrower width that cannot hold a count, as QEMU does, and changes nothing", async () => {
    const img = dir.path("snap.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", img, "1M")
    qemuIo("-c", "write -P 1 0 64k", img)
    qemuImg("snapshot", "-c", "s1", img)
    const before = readFileSync(img)
    const file = new Uint8Array(before)
    const storage = makeMemoryStorage({ name: img, initial: file })
    const image = decodeImageHeader(file.subarray(0, 65536))
    const error = await fail(changeRefcountOrder(storage, image, 0))
    expect(error.message).toBe("Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x40000 has a refcount of 2")
    const after = new Uint8Array(await run(storage.size()))
    await run(storage.read(0, after))
    expect(Buffer.from(after).equals(before)).toBe(true)
  })
})
