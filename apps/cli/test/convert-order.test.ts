/**
 * The convert pipeline against qemu-img: writes to a qcow2 target go out in
 * guest order (qemu-img without -W), so new clusters are laid out exactly as
 * qemu-img lays them out; -W lets them go in any order and still copies
 * the same data; runs of compressed clusters (one block-status extent
 * each) are copied in large tasks and read back as qemu-img reads them.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

const MiB = 1024 * 1024

/** qemu-img map --output=json, as [start, length, data, host offset] rows. */
const layout = (dir: string, name: string) =>
  JSON.parse(qemu(dir, "qemu-img", ["map", "--output=json", name]).stdout).map(
    (r: { start: number; length: number; data: boolean; offset?: number }) => [r.start, r.length, r.data, r.offset]
  )

describe("convert write order and compressed sources", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-convert-order-")
    // 24 MiB: data of three kinds with holes and zero runs between, so that
    // many tasks are in flight and a zero run splits data inside a chunk.
    const fd = fs.openSync(path.join(dir, "src.raw"), "w")
    const text = Buffer.alloc(3 * MiB, "convert order ")
    text.fill(0, MiB + 65536, MiB + 3 * 65536)
    fs.writeSync(fd, text, 0, text.length, MiB)
    const noise = Buffer.alloc(5 * MiB)
    for (let i = 0; i < noise.length; i++) noise[i] = (i * 2654435761) >>> 24
    fs.writeSync(fd, noise, 0, noise.length, 7 * MiB + 4096)
    fs.writeSync(fd, Buffer.alloc(MiB, "tail "), 0, MiB, 20 * MiB)
    fs.ftruncateSync(fd, 24 * MiB)
    fs.closeSync(fd)
    qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "src.raw", "src.qcow2"])
    for (const type of ["zlib", "zstd"]) {
      qemu(dir, "qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, "src.raw", `${type}.qcow2`])
    }
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("raw and qcow2 sources: the qcow2 target has qemu-img's layout, byte for byte in the map", () => {
    for (const [format, source] of [
      ["raw", "src.raw"],
      ["qcow2", "src.qcow2"]
    ] as const) {
      expect(qcow2(dir, ["convert", "-f", format, "-O", "qcow2", source, `ours-${format}.qcow2`]).status).toBe(0)
      qemu(dir, "qemu-img", ["convert", "-f", format, "-O", "qcow2", source, `theirs-${format}.qcow2`])
      expect(qemu(dir, "qemu-img", ["check", `ours-${format}.qcow2`]).status).toBe(0)
      expect(layout(dir, `ours-${format}.qcow2`)).toEqual(layout(dir, `theirs-${format}.qcow2`))
      expect(fs.statSync(path.join(dir, `ours-${format}.qcow2`)).size).toBe(fs.statSync(path.join(dir, `theirs-${format}.qcow2`)).size)
    }
  })

  it("small clusters (a request spans many L2 tables, allocated step by step): still qemu-img's layout", () => {
    // Each write is placed before the next one starts (its data may still be
    // going out): with 1 KiB clusters an L2 table covers 128 KiB, so a 2 MiB
    // write takes its clusters in many steps, and refcount blocks are made
    // between them.
    for (const clusterSize of [1024, 4096]) {
      const args = ["convert", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${clusterSize}`, "src.raw"]
      expect(qcow2(dir, [...args, `ours-${clusterSize}.qcow2`]).status).toBe(0)
      qemu(dir, "qemu-img", [...args, `theirs-${clusterSize}.qcow2`])
      expect(qemu(dir, "qemu-img", ["check", `ours-${clusterSize}.qcow2`]).status).toBe(0)
      expect(layout(dir, `ours-${clusterSize}.qcow2`)).toEqual(layout(dir, `theirs-${clusterSize}.qcow2`))
      expect(fs.readFileSync(path.join(dir, `ours-${clusterSize}.qcow2`)).equals(fs.readFileSync(path.join(dir, `theirs-${clusterSize}.qcow2`)))).toBe(true)
    }
  })

  it("-W (out-of-order writes) copies the same data, and the image checks clean", () => {
    expect(qcow2(dir, ["convert", "-W", "-m", "16", "-f", "raw", "-O", "qcow2", "src.raw", "unordered.qcow2"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["check", "unordered.qcow2"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "src.raw", "unordered.qcow2"]).stdout).toBe("Images are identical.\n")
  })

  it("zlib and zstd compressed sources convert to raw and qcow2 holding the source's data", () => {
    for (const type of ["zlib", "zstd"]) {
      expect(qcow2(dir, ["convert", "-O", "raw", `${type}.qcow2`, `${type}.raw`]).status).toBe(0)
      expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "raw", "src.raw", `${type}.raw`]).stdout).toBe("Images are identical.\n")
      expect(qcow2(dir, ["convert", "-O", "qcow2", `${type}.qcow2`, `${type}-plain.qcow2`]).status).toBe(0)
      qemu(dir, "qemu-img", ["convert", "-O", "qcow2", `${type}.qcow2`, `${type}-theirs.qcow2`])
      expect(qemu(dir, "qemu-img", ["check", `${type}-plain.qcow2`]).status).toBe(0)
      expect(layout(dir, `${type}-plain.qcow2`)).toEqual(layout(dir, `${type}-theirs.qcow2`))
    }
  })
})
