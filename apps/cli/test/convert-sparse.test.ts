/**
 * Raw files with holes, against qemu-img: block status comes from the file
 * system (SEEK_DATA/SEEK_HOLE, as QEMU's file driver asks it), so `map` of a
 * sparse raw file prints what qemu-img prints (explicitly written zeros are
 * data, holes are zeros), and `convert` skips the holes without reading
 * them while still finding zeros inside the data.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

const MiB = 1024 * 1024

describe("sparse raw files", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-sparse-")
    // 64 MiB: text at 1 MiB, written zeros at 8 MiB, random-ish bytes with a
    // 64 KiB zero run inside at 40 MiB (past a hole), the rest holes.
    const fd = fs.openSync(path.join(dir, "sparse.raw"), "w")
    fs.writeSync(fd, Buffer.alloc(MiB, "sparse raw file "), 0, MiB, MiB)
    fs.writeSync(fd, Buffer.alloc(2 * MiB), 0, 2 * MiB, 8 * MiB)
    const mixed = Buffer.alloc(3 * MiB)
    for (let i = 0; i < mixed.length; i++) mixed[i] = (i * 2654435761) >>> 24
    mixed.fill(0, MiB, MiB + 65536)
    fs.writeSync(fd, mixed, 0, mixed.length, 40 * MiB)
    fs.ftruncateSync(fd, 64 * MiB)
    fs.closeSync(fd)
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("map -f raw prints what qemu-img map prints", () => {
    for (const output of ["json", "human"]) {
      const ours = qcow2(dir, ["map", "-f", "raw", `--output=${output}`, "sparse.raw"])
      const theirs = qemu(dir, "qemu-img", ["map", "-f", "raw", `--output=${output}`, "sparse.raw"])
      expect(ours.stderr).toBe("")
      expect(ours.stdout).toBe(theirs.stdout)
      expect(ours.status).toBe(0)
    }
  })

  it("convert to qcow2 and back holds the same data and allocates what qemu-img allocates", () => {
    expect(qcow2(dir, ["convert", "-f", "raw", "-O", "qcow2", "sparse.raw", "ours.qcow2"]).status).toBe(0)
    qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "sparse.raw", "theirs.qcow2"])
    expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "sparse.raw", "ours.qcow2"]).stdout).toBe("Images are identical.\n")
    const allocated = (name: string) =>
      JSON.parse(qemu(dir, "qemu-img", ["map", "--output=json", name]).stdout).map((r: { start: number; length: number; data: boolean }) => [r.start, r.length, r.data])
    expect(allocated("ours.qcow2")).toEqual(allocated("theirs.qcow2"))
    expect(qcow2(dir, ["convert", "-O", "raw", "ours.qcow2", "back.raw"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "raw", "sparse.raw", "back.raw"]).stdout).toBe("Images are identical.\n")
  })
})

describe("compare with sparse raw files", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-sparse-compare-")
    // Data at 1 MiB, a zero run inside data at 4 MiB, holes elsewhere; the
    // qcow2 copy leaves both the holes and the zero run unallocated.
    const fd = fs.openSync(path.join(dir, "a.raw"), "w")
    const data = Buffer.alloc(6 * MiB, "compare sparse ")
    data.fill(0, 3 * MiB, 4 * MiB)
    fs.writeSync(fd, data, 0, data.length, MiB)
    fs.ftruncateSync(fd, 32 * MiB)
    fs.closeSync(fd)
    qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"])
    // One changed byte in a hole (20 MiB + 777) and one in the zero run.
    for (const [name, at] of [
      ["hole.raw", 20 * MiB + 777],
      ["run.raw", 4 * MiB + 4097]
    ] as const) {
      fs.copyFileSync(path.join(dir, "a.raw"), path.join(dir, name))
      const f = fs.openSync(path.join(dir, name), "r+")
      fs.writeSync(f, Buffer.from([7]), 0, 1, at)
      fs.closeSync(f)
    }
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("prints what qemu-img compare prints, either side first", () => {
    for (const raw of ["a.raw", "hole.raw", "run.raw"]) {
      for (const args of [
        ["-f", "qcow2", "-F", "raw", "a.qcow2", raw],
        ["-f", "raw", "-F", "qcow2", raw, "a.qcow2"],
        ["-f", "raw", "-F", "raw", "a.raw", raw]
      ]) {
        const ours = qcow2(dir, ["compare", ...args])
        const theirs = qemu(dir, "qemu-img", ["compare", ...args], true)
        expect([ours.stdout, ours.status]).toEqual([theirs.stdout, theirs.status])
      }
    }
  })
})

describe("compare across its read steps", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-compare-steps-")
    // 10 MiB of data in one extent, so that compare reads it in several
    // steps; copies differ past the first step, in the first byte of a step
    // (8 MiB) and in the last sector.
    const data = Buffer.alloc(10 * MiB)
    for (let i = 0; i < data.length; i++) data[i] = ((i * 2654435761) >>> 24) | 1
    fs.writeFileSync(path.join(dir, "a.raw"), data)
    qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"])
    for (const [name, at] of [
      ["mid.raw", 9 * MiB + 513],
      ["step.raw", 8 * MiB],
      ["last.raw", 10 * MiB - 1]
    ] as const) {
      const copy = Buffer.from(data)
      copy[at] = 0
      fs.writeFileSync(path.join(dir, name), copy)
    }
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("reports the first differing sector as qemu-img compare does", () => {
    for (const raw of ["a.raw", "mid.raw", "step.raw", "last.raw"]) {
      for (const args of [
        ["-f", "qcow2", "-F", "raw", "a.qcow2", raw],
        ["-f", "raw", "-F", "raw", raw, "a.raw"]
      ]) {
        const ours = qcow2(dir, ["compare", ...args])
        const theirs = qemu(dir, "qemu-img", ["compare", ...args], true)
        expect(ours.stdout).toBe(theirs.stdout)
        expect(ours.status).toBe(theirs.status)
      }
    }
  })
})
