import { describe, expect, it } from "vitest"
import { ourCheckResult, putU64, scratch, sh, u64 } from "./files.js"

const path = scratch("qcow2-check-autoclear-")

describe("a repair opens the image read-write (iotest 036)", () => {
  for (const repair of ["leaks", "all"] as const) {
    it(`check -r ${repair} clears autoclear bits it does not know, as qemu-img does`, async () => {
      const ours = path(`ours-${repair}.qcow2`)
      const theirs = path(`theirs-${repair}.qcow2`)
      for (const file of [ours, theirs]) {
        sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"])
        putU64(file, 88, 1n << 63n)
      }
      sh("qemu-img", ["check", "-r", repair, theirs])
      const result = await ourCheckResult(ours, repair)
      expect(result._tag).toBe("Success")
      expect(u64(theirs, 88)).toBe(0n)
      expect(u64(ours, 88)).toBe(0n)
    })
  }

  it("a plain check leaves them alone", async () => {
    const file = path("plain.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"])
    putU64(file, 88, 1n << 63n)
    await ourCheckResult(file)
    expect(u64(file, 88)).toBe(1n << 63n)
  })
})
