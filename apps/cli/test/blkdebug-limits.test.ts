/**
 * qemu-io over a blkdebug node with request limits (iotest 204): write
 * zeroes is cut by opt-write-zero / max-write-zero / max-transfer as QEMU's
 * block layer cuts it, pieces shorter than the alignment go out as zero
 * data, so the overlay keeps the same clusters allocated as under qemu-io.
 */
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

describe("qemu-io blkdebug request limits", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-blkdebug-limits-")
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "64M"])
    qemu(dir, "qemu-io", ["-c", "write -P 11 0 64M", "base.qcow2"])
    for (const name of ["ours.qcow2", "theirs.qcow2"]) {
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=1M", "-F", "qcow2", "-b", "base.qcow2", name])
      qemu(dir, "qemu-io", ["-c", "write -P 22 0 60M", name])
    }
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("write -z leaves the layout qemu-io leaves", () => {
    const run = (name: string) => [
      "-c",
      `open -o driver=blkdebug,image.driver=qcow2,align=512,max-transfer=64k,opt-write-zero=1M blkdebug::${name}`,
      "-c",
      "write -z 8003584 2093056",
      "-c",
      `close`,
      "-c",
      `open -o driver=blkdebug,image.driver=qcow2,align=512,opt-write-zero=15M,max-write-zero=15M blkdebug::${name}`,
      "-c",
      "write -z 32M 26M"
    ]
    expect(qcow2(dir, ["io", ...run("ours.qcow2")]).status).toBe(0)
    qemu(dir, "qemu-io", run("theirs.qcow2"))
    const map = (name: string) => qemu(dir, "qemu-img", ["map", "-f", "qcow2", name]).stdout.replaceAll(name, "IMG")
    expect(map("ours.qcow2")).toBe(map("theirs.qcow2"))
    expect(map("ours.qcow2").split("\n").length).toBeGreaterThan(3)
    expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "ours.qcow2", "theirs.qcow2"]).stdout).toBe("Images are identical.\n")
  })
})
