/**
 * qemu-io's copy-on-read (-C, `open -C`, the copy-on-read filter driver),
 * against qemu-io: reads copy whole clusters from the backing file into the
 * overlay (zeros as zero clusters, clusters the overlay holds untouched), so
 * the overlay ends with the same allocation and content as qemu-io leaves.
 */
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

describe("qemu-io copy-on-read", () => {
  let dir: string
  const prepare = (name: string) => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", name])
    qemu(dir, "qemu-io", ["-f", "qcow2", "-c", "write -z -u 1M 64k", name])
  }
  const reads = ["read -P 0 1M 128k", "read 0 0", "read -P 0 1k 3M", "read -P 55 32M 1k", "read -P 0 33M 1k"]
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-cor-")
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "64M"])
    qemu(dir, "qemu-io", ["-c", "write -P 55 32M 1k", "base.qcow2"])
    for (const name of ["theirs.qcow2", "ours.qcow2", "filter.qcow2"]) prepare(name)
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  const detached = (name: string) => {
    qemu(dir, "qemu-img", ["rebase", "-u", "-b", "", "-f", "qcow2", name])
    return qemu(dir, "qemu-io", ["-f", "qcow2", "-c", "map", name]).stdout
  }

  it("-C copies what reads see into the overlay, as qemu-io -C does", () => {
    const theirs = qemu(dir, "qemu-io", ["-f", "qcow2", "-C", ...reads.flatMap((r) => ["-c", r]), "theirs.qcow2"])
    const ours = qcow2(dir, ["io", "-f", "qcow2", "-C", ...reads.flatMap((r) => ["-c", r]), "ours.qcow2"])
    expect(ours.status).toBe(0)
    expect(ours.stdout.replace(/\d[^\n]*ops\/sec\)/g, "")).toBe(theirs.stdout.replace(/\d[^\n]*ops\/sec\)/g, ""))
    const theirMap = detached("theirs.qcow2")
    expect(detached("ours.qcow2")).toBe(theirMap)
    expect(theirMap).toContain("allocated at offset 0 bytes")
    expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "ours.qcow2", "theirs.qcow2"]).stdout).toBe("Images are identical.\n")
  })

  it("the copy-on-read filter driver does the same, and refuses read-only", () => {
    const open = "open -o driver=copy-on-read,file.driver=qcow2 filter.qcow2"
    expect(qcow2(dir, ["io", "-c", open, ...reads.flatMap((r) => ["-c", r])]).status).toBe(0)
    const refused = ["-c", "open -r -o driver=copy-on-read,file.driver=qcow2 filter.qcow2"]
    const ours = qcow2(dir, ["io", ...refused])
    const theirs = qemu(dir, "qemu-io", refused, true)
    expect(ours.stderr.replace(/^qcow2:/, "qemu-io:")).toBe(theirs.stderr)
    expect(detached("filter.qcow2")).toBe(qemu(dir, "qemu-io", ["-f", "qcow2", "-c", "map", "theirs.qcow2"]).stdout)
    expect(qemu(dir, "qemu-img", ["check", "filter.qcow2"]).status).toBe(0)
  })

  it("a blkdebug node over the image sees cor_write: an error injected there fails the read as under qemu-io", () => {
    for (const name of ["rule-ours.qcow2", "rule-theirs.qcow2"]) prepare(name)
    for (const sector of ["2048", "2176"]) {
      fs.writeFileSync(`${dir}/blkdebug.conf`, `[inject-error]\nevent = "cor_write"\nsector = "${sector}"\n`)
      const args = (name: string) => ["-c", `open -C -o driver=blkdebug,config=${dir}/blkdebug.conf,image.driver=qcow2 ${name}`, "-c", "read -P 0 1M 128k"]
      const ours = qcow2(dir, ["io", ...args("rule-ours.qcow2")])
      const theirs = qemu(dir, "qemu-io", args("rule-theirs.qcow2"), true)
      expect(ours.stdout.replace(/\d[^\n]*ops\/sec\)/g, "")).toBe(theirs.stdout.replace(/\d[^\n]*ops\/sec\)/g, ""))
      expect(ours.status).toBe(theirs.status)
    }
    expect(qemu(dir, "qemu-io", ["-f", "qcow2", "-c", "map", "rule-ours.qcow2"]).stdout).toBe(qemu(dir, "qemu-io", ["-f", "qcow2", "-c", "map", "rule-theirs.qcow2"]).stdout)
  })
})
