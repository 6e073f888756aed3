/**
 * convert cases from QEMU's iotest 122, against qemu-img: compressed
 * concatenation of sources whose sizes are not whole target clusters (the
 * cluster that spans two sources is read across them and compressed whole),
 * `-c -S 0` (every cluster written, zero clusters too), and `-n` with `-o`.
 */
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

describe("convert: compressed joins and -S 0 (iotest 122)", () => {
  let dir: string
  const map = (name: string) => qemu(dir, "qemu-img", ["map", "--output=json", name]).stdout
  const sameAsQemu = (args: ReadonlyArray<string>, ours: string, theirs: string) => {
    expect(qcow2(dir, ["convert", ...args, ours]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["convert", ...args, theirs]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["check", ours]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", ours, theirs]).stdout).toBe("Images are identical.\n")
    expect(map(ours)).toBe(map(theirs))
  }
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-convert-join-")
    for (const n of ["1", "2"]) qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=1024", `s${n}.qcow2`, "1023k"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x11 16k 16k", "-c", "write -P 0x22 130k 130k", "-c", "write -P 0x33 1022k 1k", "s1.qcow2"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x44 0 1k", "s2.qcow2"])
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "z.qcow2", "16M"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x22 0 3M", "-c", "write -P 0 3M 3M", "z.qcow2"])
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("compresses the cluster that spans two sources in one piece, as qemu-img does", () => {
    sameAsQemu(["-c", "-O", "qcow2", "s1.qcow2", "s2.qcow2"], "join-ours.qcow2", "join-theirs.qcow2")
  })

  it("-c -S 0 writes the clusters that hold zeros too", () => {
    sameAsQemu(["-c", "-S", "0", "-O", "qcow2", "z.qcow2"], "full-ours.qcow2", "full-theirs.qcow2")
  })

  it("-n refuses -o as qemu-img does", () => {
    const args = ["convert", "-O", "qcow2", "-o", "preallocation=metadata", "-n", "z.qcow2", "full-ours.qcow2"]
    const ours = qcow2(dir, args)
    const theirs = qemu(dir, "qemu-img", args, true)
    expect(theirs.status).toBe(1)
    expect(ours.status).toBe(1)
    expect(ours.stderr.replace(/^qcow2:/, "qemu-img:")).toBe(theirs.stderr)
  })
})
