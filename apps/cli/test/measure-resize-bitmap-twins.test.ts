import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const dir = makeTempDir("qcow2-twins-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const unprefixed = (r: Run) => r.stderr.replace(/^(qemu-img|qcow2): /gm, "")
const outcome = (r: Run) => [r.status, r.stdout, unprefixed(r)]

describe("measure -l: an internal snapshot is measured as qemu-img measures it", () => {
  it("by name, id and snapshot.* options, human and JSON, and an unknown snapshot", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "m.qcow2", "64M"])
    qemu(dir, "qemu-io", ["-c", "write 0 4M", "m.qcow2"])
    qemu(dir, "qemu-img", ["snapshot", "-c", "s1", "m.qcow2"])
    qemu(dir, "qemu-img", ["resize", "m.qcow2", "128M"])
    qemu(dir, "qemu-io", ["-c", "write 100M 3M", "m.qcow2"])
    for (const l of [["-l", "s1"], ["-l", "snapshot.name=s1"], ["-l", "snapshot.id=1"], ["-l", "nope"], ["--output=json", "-l", "s1"], ["-o", "cluster_size=4k", "-l", "1"]]) {
      const args = ["measure", "-O", "qcow2", ...l, "m.qcow2"]
      expect(outcome(qcow2(dir, args)), l.join(" ")).toEqual(outcome(qemu(dir, "qemu-img", args, true)))
    }
  })
})

describe("resize --preallocation where the old end cuts a cluster (iotest 125)", () => {
  const blocks = (file: string) => fs.statSync(path.join(dir, file)).blocks

  it("falloc/full: later writes into the grown part of that cluster do not grow the file", () => {
    for (const mode of ["falloc", "full"]) {
      const file = `grow-${mode}.qcow2`
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=64k", file, "2048000"])
      expect(qcow2(dir, ["resize", "-f", "qcow2", `--preallocation=${mode}`, file, "+16K"]).status).toBe(0)
      qemu(dir, "qemu-io", ["-c", "write 0 2048000", file])
      const length = fs.statSync(path.join(dir, file)).size
      const before = blocks(file)
      qemu(dir, "qemu-io", ["-c", "write 2048000 16k", file])
      expect([fs.statSync(path.join(dir, file)).size, blocks(file)]).toEqual([length, before])
      expect(qemu(dir, "qemu-img", ["check", file]).stdout).toContain("No errors were found")
    }
  })

  it("metadata/full over a backing file: the old part keeps the backing data, the new part reads zeros, 7 clusters", () => {
    qemu(dir, "qemu-img", ["create", "-f", "raw", "base.raw", "128k"])
    qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -q -P 1 0 128k", "base.raw"])
    for (const mode of ["metadata", "full"]) {
      const file = `over-${mode}.qcow2`
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-F", "raw", "-b", "base.raw", "-o", "cluster_size=64k", file, "31k"])
      expect(qcow2(dir, ["resize", "-f", "qcow2", `--preallocation=${mode}`, file, "96k"]).stdout).toBe("Image resized.\n")
      const io = qemu(dir, "qemu-io", ["-c", "read -q -P 1 0 31k", "-c", "read -q -P 0 31k 63k", file])
      expect(io.stdout).toBe("")
      expect(fs.statSync(path.join(dir, file)).size).toBe(65536 * 7)
      expect(qemu(dir, "qemu-img", ["check", file]).stdout).toContain("No errors were found")
    }
  })
})

describe("bitmap: repeated actions as qemu-img 7.2 runs them", () => {
  it("each action in order, stopping at the first failure; -g/-b the last one given", () => {
    const cases = [
      "--add --add",
      "--add --remove",
      "--add -g 128k --add",
      "--add --disable --enable --clear",
      "--add --merge sb -b src.qcow2 --merge sb --disable",
      "--add -g 128k -g 256k",
      "--add --remove --add -g 128k --disable",
      "--clear --clear",
      "--merge sb -b nope.qcow2 -b src.qcow2 --add"
    ]
    const info = (file: string) => JSON.stringify((JSON.parse(qemu(dir, "qemu-img", ["info", "--output=json", file]).stdout) as { "format-specific": { data: { bitmaps?: unknown } } })["format-specific"].data.bitmaps)
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "src.qcow2", "10M"])
    qemu(dir, "qemu-img", ["bitmap", "--add", "src.qcow2", "sb"])
    qemu(dir, "qemu-io", ["-c", "write 0 64k", "src.qcow2"])
    for (const c of cases) {
      const results = (["ours", "theirs"] as const).map((who) => {
        const file = `bm-${who}.qcow2`
        fs.rmSync(path.join(dir, file), { force: true })
        qemu(dir, "qemu-img", ["create", "-f", "qcow2", file, "10M"])
        const args = ["bitmap", ...c.split(" "), file, "bm"]
        const run = who === "ours" ? qcow2(dir, args) : qemu(dir, "qemu-img", args, true)
        return [...outcome(run), info(file)]
      })
      expect(results[0], c).toEqual(results[1])
    }
  })

  it("resize keeps persistent bitmaps as QEMU does: info and check agree after growing and shrinking", () => {
    const results = (["ours", "theirs"] as const).map((who) => {
      const file = `rb-${who}.qcow2`
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", file, "10M"])
      qemu(dir, "qemu-img", ["bitmap", "--add", "-g", "128k", file, "b1"])
      qemu(dir, "qemu-io", ["-c", "write 1M 64k", "-c", "write 9M 1M", file])
      const resize = (args: ReadonlyArray<string>) => (who === "ours" ? qcow2(dir, ["resize", ...args]) : qemu(dir, "qemu-img", ["resize", ...args]))
      const steps = [resize([file, "+20M"]), resize(["--shrink", file, "9500k"]), resize([file, "12M"])].map((r) => [r.status, r.stdout])
      const check = qemu(dir, "qemu-img", ["check", file])
      const bitmaps = (JSON.parse(qemu(dir, "qemu-img", ["info", "--output=json", file]).stdout) as { "format-specific": unknown })["format-specific"]
      return [steps, check.stdout.split("\n")[0], bitmaps]
    })
    expect(results[0]).toEqual(results[1])
  })
})
