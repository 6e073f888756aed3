/**
 * Behaviour QEMU 7.2's iotests found differing from qemu-img, each pinned
 * here against the real qemu-img/qemu-io (the iotests themselves are not
 * part of `pnpm test`).
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { BUNDLE, makeTempDir, qcow2, qemu } from "./helpers.js"

const dir = makeTempDir("qcow2-iotests-parity-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const file = (name: string) => path.join(dir, name)
const allocated = (name: string) => fs.statSync(file(name)).blocks * 512
const rawMap = (name: string) => qemu(dir, "qemu-img", ["map", "--output=json", "-f", "raw", name]).stdout

describe("a new file's first block is allocated, as QEMU's file driver does (iotest 178)", () => {
  it("create -f raw: same allocation, map and measure as qemu-img's file", () => {
    for (const size of ["1G", "1k", "0"]) {
      qemu(dir, "qemu-img", ["create", "-f", "raw", `q${size}.raw`, size])
      expect(qcow2(dir, ["create", "-f", "raw", `t${size}.raw`, size]).status).toBe(0)
      expect([fs.statSync(file(`t${size}.raw`)).size, allocated(`t${size}.raw`), rawMap(`t${size}.raw`)], size).toEqual([
        fs.statSync(file(`q${size}.raw`)).size,
        allocated(`q${size}.raw`),
        rawMap(`q${size}.raw`)
      ])
    }
    const measure = ["measure", "-O", "qcow2", "-f", "raw"]
    expect(qcow2(dir, [...measure, "t1G.raw"]).stdout).toBe(qemu(dir, "qemu-img", [...measure, "q1G.raw"]).stdout)
    expect(qcow2(dir, [...measure, "t1G.raw"]).stdout).toBe("required size: 458752\nfully allocated size: 1074135040\n")
  })

  it("a qcow2 data file and a raw file grown from empty get it too", () => {
    for (const prealloc of ["off", "metadata"]) {
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", `data_file=qd-${prealloc}.raw,preallocation=${prealloc}`, `qd-${prealloc}.qcow2`, "1M"])
      expect(qcow2(dir, ["create", "-f", "qcow2", "-o", `data_file=td-${prealloc}.raw,preallocation=${prealloc}`, `td-${prealloc}.qcow2`, "1M"]).status).toBe(0)
      expect(allocated(`td-${prealloc}.raw`), prealloc).toBe(allocated(`qd-${prealloc}.raw`))
      expect(qemu(dir, "qemu-img", ["check", `td-${prealloc}.qcow2`]).stdout).toContain("No errors were found")
    }
    for (const [tool, name] of [["qemu", "qg.raw"], ["ts", "tg.raw"]] as const) {
      fs.writeFileSync(file(name), "")
      const args = ["resize", "-f", "raw", name, "64M"]
      expect((tool === "qemu" ? qemu(dir, "qemu-img", args) : qcow2(dir, args)).stdout).toBe("Image resized.\n")
    }
    expect([allocated("tg.raw"), rawMap("tg.raw")]).toEqual([allocated("qg.raw"), rawMap("qg.raw")])
  })
})

describe("bitmap tables and directories do not grow the file past their last byte (iotest 190)", () => {
  it("bitmap --add twice on a 2 TiB image of 2 MiB clusters: the file is as long as qemu-img's", () => {
    for (const [tool, name] of [["qemu", "qb.qcow2"], ["ts", "tb.qcow2"]] as const) {
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=2M", name, "2T"])
      for (const add of [["--granularity", "512", name, "b1"], ["-g", "2M", name, "b2"]]) {
        const args = ["bitmap", "--add", "-f", "qcow2", ...add]
        expect((tool === "qemu" ? qemu(dir, "qemu-img", args) : qcow2(dir, args)).status).toBe(0)
      }
    }
    expect(fs.statSync(file("tb.qcow2")).size).toBe(fs.statSync(file("qb.qcow2")).size)
    expect(qemu(dir, "qemu-img", ["check", "tb.qcow2"]).stdout).toContain("No errors were found")
    const measure = ["measure", "-O", "qcow2", "-f", "raw"]
    expect(qcow2(dir, [...measure, "tb.qcow2"]).stdout).toBe(qemu(dir, "qemu-img", [...measure, "qb.qcow2"]).stdout)
  })
})

describe("-o help, unknown formats and file counts as qemu-img convert, create and amend check them (iotest 082)", () => {
  const unprefixed = (text: string) => text.replace(/^(qemu-img|qcow2): /gm, "")
  it("same output and exit status as qemu-img", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "h.qcow2", "1M"])
    const cases = [
      ["convert", "-O", "qcow2", "-o", "help", "h.qcow2", "out.qcow2"],
      ["convert", "-O", "qcow2", "-o", "cluster_size=4k,?"],
      ["convert", "-O", "raw", "-o", "help"],
      ["convert", "-O", "bochs", "-o", "help"],
      ["convert", "-O", "qcow2", "-o", "backing_file=h.qcow2,", "-o", "help", "h.qcow2", "out.qcow2"],
      ["convert", "-O", "qcow2", "h.qcow2"],
      ["convert", "-O", "bochs", "h.qcow2", "out.bochs"],
      ["create", "-f", "bochs", "-o", "help"],
      ["create", "-f", "bochs", "x.bochs", "1M"],
      ["create", "-f", "foo", "x.foo", "1M"],
      ["amend", "-f", "bochs", "-o", "help"],
      ["amend", "-f", "raw", "-o", "help"],
      ["amend", "-f", "foo", "-o", "help"],
      ["amend", "-f", "foo", "-o", "lazy_refcounts=on", "h.qcow2"]
    ]
    for (const args of cases) {
      const ours = qcow2(dir, args)
      const theirs = qemu(dir, "qemu-img", args, true)
      expect([ours.status, ours.stdout, unprefixed(ours.stderr)], args.join(" ")).toEqual([theirs.status, theirs.stdout, unprefixed(theirs.stderr)])
    }
    expect(fs.existsSync(file("out.qcow2"))).toBe(false)
  })
})

describe("create without -f makes what qemu-img makes when run as qemu-img: raw (iotest 082)", () => {
  const QEMU_IMG_BIN = path.join(path.dirname(BUNDLE), "qemu-img.cjs")
  const asQemuImg = (args: ReadonlyArray<string>) => spawnSync(process.execPath, [QEMU_IMG_BIN, ...args], { cwd: dir, encoding: "utf8" })
  it("-o help, -o ?, creating, and -b/-F refused for raw: same output, exit status and file as qemu-img", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "nf-base.qcow2", "1M"])
    const cases = [
      ["create", "-o", "help"],
      ["create", "-o", "?"],
      ["create", "-o", "help", "nf.img"],
      ["create", "nf.img", "1M"],
      ["create", "-o", "preallocation=full", "nf.img", "64k"],
      ["create", "-o", "cluster_size=4k", "nf.img", "1M"],
      ["create", "-b", "nf-base.qcow2", "-F", "qcow2", "nf.img"],
      ["create", "-F", "qcow2", "nf.img", "1M"],
      ["create", "-f", "raw", "-o", "foo=bar", "-b", "nf-base.qcow2", "nf.img", "1M"],
      ["create", "-o", "foo=bar", "nf.img", "1Q"]
    ]
    const created = () => (fs.existsSync(file("nf.img")) ? qemu(dir, "qemu-img", ["info", "--output=json", "nf.img"]).stdout : "none")
    for (const args of cases) {
      fs.rmSync(file("nf.img"), { force: true })
      const theirs = qemu(dir, "qemu-img", args, true)
      const theirFile = created()
      fs.rmSync(file("nf.img"), { force: true })
      const ours = asQemuImg(args)
      expect([ours.status, ours.stdout, ours.stderr, created()], args.join(" ")).toEqual([theirs.status, theirs.stdout, theirs.stderr, theirFile])
    }
  })

  it("run as qcow2, create keeps this toolkit's default, qcow2", () => {
    fs.rmSync(file("nf.img"), { force: true })
    expect(qcow2(dir, ["create", "-o", "help"]).stdout).toMatch(/^Supported qcow2 options:\n/)
    expect(qcow2(dir, ["create", "nf.img", "1M"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["info", "nf.img"]).stdout).toContain("file format: qcow2\n")
  })
})

describe("discard punches holes, as QEMU's file driver does (iotest 250)", () => {
  it("resize --shrink gives the clusters it frees inside the file back, as much as qemu-img does", () => {
    const usage: Record<string, number> = {}
    for (const [tool, name] of [["qemu", "qs.qcow2"], ["ts", "ts.qcow2"]] as const) {
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=1M,preallocation=metadata", name, "300M"])
      // The guest's first 10 MiB end up at the end of the file, its last 10 MiB inside it.
      qemu(dir, "qemu-io", ["-c", "discard 0 10M", "-c", "discard 290M 10M", "-c", "write 290M 10M", "-c", "write 0 10M", name])
      const before = allocated(name)
      const args = ["resize", "--shrink", name, "5M"]
      expect((tool === "qemu" ? qemu(dir, "qemu-img", args) : qcow2(dir, args)).stdout).toBe("Image resized.\n")
      usage[tool] = before - allocated(name)
    }
    expect(usage.ts).toBe(usage.qemu)
    expect(usage.ts).toBe(15 * 1024 * 1024)
    expect(qemu(dir, "qemu-img", ["check", "ts.qcow2"]).stdout).toContain("No errors were found")
    expect(qemu(dir, "qemu-img", ["compare", "qs.qcow2", "ts.qcow2"]).stdout).toBe("Images are identical.\n")
  })

  it("qcow2 io discard on a raw file frees its blocks, and the range reads as zeros", () => {
    for (const [tool, name] of [["qemu", "qp.raw"], ["ts", "tp.raw"]] as const) {
      qemu(dir, "qemu-img", ["create", "-f", "raw", name, "4M"])
      qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 1 0 4M", name])
      const args = ["-f", "raw", "-c", "discard 64k 1M", name]
      expect((tool === "qemu" ? qemu(dir, "qemu-io", args) : qcow2(dir, ["io", ...args])).status).toBe(0)
    }
    expect(allocated("tp.raw")).toBe(allocated("qp.raw"))
    expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "raw", "qp.raw", "tp.raw"]).stdout).toBe("Images are identical.\n")
    expect(qemu(dir, "qemu-io", ["-f", "raw", "-c", "read -P 0 64k 1M", "-c", "read -P 1 0 64k", "-c", "read -P 1 1088k 2944k", "tp.raw"]).stdout).not.toContain("Pattern verification failed")
  })
})

describe("convert -p counts the data it copies, as qemu-img convert does (iotest 086)", () => {
  it("four 1 MiB extents of a sparse 128 MiB disk: 25, 50, 75 and 100%, from qcow2 and from a sparse raw file", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "p.qcow2", "128M"])
    for (const at of ["0", "2M", "4M", "32M"]) qemu(dir, "qemu-io", ["-c", `write ${at} 1M`, "p.qcow2"])
    qemu(dir, "qemu-img", ["convert", "-O", "raw", "p.qcow2", "p.raw"])
    for (const args of [["-O", "qcow2", "p.qcow2"], ["-O", "raw", "p.qcow2"], ["-O", "qcow2", "-f", "raw", "p.raw"]]) {
      fs.rmSync(file("out"), { force: true })
      const theirs = qemu(dir, "qemu-img", ["convert", "-p", ...args, "out"]).stdout
      fs.rmSync(file("out"), { force: true })
      expect(qcow2(dir, ["convert", "-p", ...args, "out"]).stdout, args.join(" ")).toBe(theirs)
    }
    expect(qcow2(dir, ["convert", "-p", "-O", "qcow2", "p.qcow2", "out2"]).stdout.split("\r").map((s) => s.trim())).toEqual([
      "(0.00/100%)",
      "(25.00/100%)",
      "(50.00/100%)",
      "(75.00/100%)",
      "(100.00/100%)",
      "(100.00/100%)",
      ""
    ])
  })
})

describe("amend -o compat=1.1 completes v2 snapshot entries as qemu-img does (iotest 261)", () => {
  /** The snapshot table's entries, each as its bytes (qcow2.txt "Snapshot table"). */
  const snapshotEntries = (name: string): Buffer[] => {
    const bytes = fs.readFileSync(file(name))
    const count = bytes.readUInt32BE(60)
    let at = Number(bytes.readBigUInt64BE(64))
    const entries: Buffer[] = []
    for (let i = 0; i < count; i++) {
      const length = 40 + bytes.readUInt32BE(at + 36) + bytes.readUInt16BE(at + 12) + bytes.readUInt16BE(at + 14)
      entries.push(bytes.subarray(at, at + length))
      at += Math.ceil(length / 8) * 8
    }
    return entries
  }

  it("an entry without extra data gets the VM state size, the virtual size and icount -1", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "64M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 64k", "v2.qcow2"])
    qemu(dir, "qemu-img", ["snapshot", "-c", "sn0", "v2.qcow2"])
    // Strip sn0's extra data, as a v2 writer without it (QEMU before 1.0) leaves the entry.
    const bytes = fs.readFileSync(file("v2.qcow2"))
    const at = Number(bytes.readBigUInt64BE(64))
    const [entry] = snapshotEntries("v2.qcow2")
    const extra = entry!.readUInt32BE(36)
    const stripped = Buffer.concat([entry!.subarray(0, 36), Buffer.alloc(4), entry!.subarray(40 + extra)])
    stripped.copy(bytes, at)
    fs.writeFileSync(file("v2.qcow2"), bytes)
    fs.copyFileSync(file("v2.qcow2"), file("q3.qcow2"))
    fs.copyFileSync(file("v2.qcow2"), file("t3.qcow2"))
    qemu(dir, "qemu-img", ["amend", "-o", "compat=1.1", "q3.qcow2"])
    expect(qcow2(dir, ["amend", "-o", "compat=1.1", "t3.qcow2"])).toMatchObject({ status: 0, stderr: "" })
    expect(snapshotEntries("t3.qcow2")).toEqual(snapshotEntries("q3.qcow2"))
    expect(snapshotEntries("t3.qcow2")[0]!.readUInt32BE(36)).toBe(24)
    expect(qemu(dir, "qemu-img", ["check", "t3.qcow2"]).stdout).toContain("No errors were found")
    expect(qemu(dir, "qemu-img", ["info", "t3.qcow2"]).stdout).toContain("compat: 1.1")
    expect(qemu(dir, "qemu-img", ["compare", "q3.qcow2", "t3.qcow2"]).stdout).toBe("Images are identical.\n")
  })
})

describe("convert -S 0 fully allocates the target, as qemu-img does (iotest 122)", () => {
  it("zeros are written as data: a raw target has no holes, a qcow2 target maps as data from end to end", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "s.qcow2", "8M"])
    qemu(dir, "qemu-io", ["-c", "write -P 7 1M 1M", "s.qcow2"])
    for (const [tool, name] of [["qemu", "qs0.raw"], ["ts", "ts0.raw"]] as const) {
      const args = ["convert", "-S", "0", "-O", "raw", "s.qcow2", name]
      expect((tool === "qemu" ? qemu(dir, "qemu-img", args) : qcow2(dir, args)).status).toBe(0)
    }
    expect([allocated("ts0.raw"), rawMap("ts0.raw")]).toEqual([allocated("qs0.raw"), rawMap("qs0.raw")])
    expect(qcow2(dir, ["convert", "-S", "0", "-O", "qcow2", "s.qcow2", "ts0.qcow2"]).status).toBe(0)
    const map = JSON.parse(qemu(dir, "qemu-img", ["map", "--output=json", "ts0.qcow2"]).stdout) as Array<{ length: number; data: boolean; zero: boolean }>
    expect(map.every((e) => e.data && !e.zero)).toBe(true)
    expect(map.reduce((n, e) => n + e.length, 0)).toBe(8 * 1024 * 1024)
    expect(qemu(dir, "qemu-img", ["compare", "s.qcow2", "ts0.qcow2"]).stdout).toBe("Images are identical.\n")
    expect(qemu(dir, "qemu-img", ["check", "ts0.qcow2"]).stdout).toContain("No errors were found")
  })
})

describe("check reports an unreadable snapshot table as qemu-img does, through error_report (iotest 261)", () => {
  it("too much extra data in an entry: the same lines, the error with the program name before it", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "x.qcow2", "1M"])
    qemu(dir, "qemu-img", ["snapshot", "-c", "sn0", "x.qcow2"])
    const bytes = fs.readFileSync(file("x.qcow2"))
    bytes.writeUInt32BE(65536, Number(bytes.readBigUInt64BE(64)) + 36)
    fs.writeFileSync(file("x.qcow2"), bytes)
    const ours = qcow2(dir, ["check", "x.qcow2"])
    const theirs = qemu(dir, "qemu-img", ["check", "x.qcow2"], true)
    expect([ours.status, ours.stdout, ours.stderr.replace(/^qcow2: /gm, "qemu-img: ")]).toEqual([theirs.status, theirs.stdout, theirs.stderr])
    expect(ours.stderr).toContain("qcow2: ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry 0\n")
  })
})

describe("a snapshot deletion failing on the way only leaks, with QEMU's messages (iotest 217)", () => {
  it("an EIO from the first cluster free: the same two lines, the same leaks as qemu-img", () => {
    fs.writeFileSync(file("free.conf"), '[inject-error]\nevent = "cluster_free"\nerrno = "5"\n')
    const outcome: Record<string, { status: number; stderr: string; check: string }> = {}
    for (const [tool, name] of [["qemu", "qd.qcow2"], ["ts", "td.qcow2"]] as const) {
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", name, "64M"])
      qemu(dir, "qemu-io", ["-c", "write 0 64k", name])
      qemu(dir, "qemu-img", ["snapshot", "-c", "foo", name])
      const args = ["snapshot", "-d", "foo", `blkdebug:free.conf:${name}`]
      const run = tool === "qemu" ? qemu(dir, "qemu-img", args, true) : qcow2(dir, args)
      outcome[tool] = { status: run.status, stderr: run.stderr.replace(/^qcow2: /gm, "qemu-img: "), check: qemu(dir, "qemu-img", ["check", name], true).stderr }
    }
    expect(outcome.ts).toEqual(outcome.qemu)
    expect(outcome.ts!.stderr).toBe(
      "qcow2_free_clusters failed: Input/output error\nqemu-img: Could not delete snapshot 'foo': Failed to free the cluster and L1 table: Input/output error\n"
    )
    expect(outcome.ts!.check.split("\n").filter((line) => line.startsWith("Leaked cluster"))).toHaveLength(4)
  })
})

describe("failed snapshot operations fail as qemu-img's do and leave the image as QEMU leaves it (iotest 080)", () => {
  const be64 = (name: string, at: number): number => {
    const bytes = Buffer.alloc(8)
    const fd = fs.openSync(file(name), "r")
    fs.readSync(fd, bytes, 0, 8, at)
    fs.closeSync(fd)
    return Number(bytes.readBigUInt64BE())
  }
  const poke = (name: string, at: number, bytes: Buffer) => {
    const fd = fs.openSync(file(name), "r+")
    fs.writeSync(fd, bytes, 0, bytes.length, at)
    fs.closeSync(fd)
  }
  /** A 64 MiB image with 512 bytes written and, when `snapshot`, a snapshot "test" taken by qemu-img. */
  const image = (name: string, snapshot: boolean) => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", name, "64M"])
    qemu(dir, "qemu-io", ["-c", "write 0 512", name])
    if (snapshot) qemu(dir, "qemu-img", ["snapshot", "-c", "test", name])
  }
  /**
   * Runs `args` through qemu-img and this CLI, each on an image `setup`
   * made; the same exit status and messages, and `qemu-img check` finding
   * the same errors afterwards (with `sameLeaks`, the same leaks too: QEMU
   * leaks a refcount block this toolkit does not allocate on one path).
   */
  const both = (setup: (name: string) => void, args: (name: string) => ReadonlyArray<string>, sameLeaks = true) => {
    const outcome: Record<string, { status: number; stderr: string; check: string }> = {}
    for (const [tool, name] of [["qemu", "q080.qcow2"], ["ts", "t080.qcow2"]] as const) {
      setup(name)
      const run = tool === "qemu" ? qemu(dir, "qemu-img", args(name), true) : qcow2(dir, args(name))
      const check = qemu(dir, "qemu-img", ["check", name], true)
      outcome[tool] = { status: run.status, stderr: run.stderr.replace(/^qcow2: /gm, "qemu-img: "), check: check.stdout + check.stderr }
    }
    const errors = (check: string) => check.split("\n").filter((line) => line.startsWith("ERROR"))
    if (sameLeaks) expect(outcome.ts).toEqual(outcome.qemu)
    else expect({ ...outcome.ts, check: errors(outcome.ts!.check) }).toEqual({ ...outcome.qemu, check: errors(outcome.qemu!.check) })
    return outcome.ts!
  }

  it("snapshot -c over an L2 entry far past the end: EAGAIN where QEMU would add a refcount block, EFBIG past the refcount table's limit", () => {
    for (const [entry, expected] of [
      ["bfffffffffff0000", "-27 (File too large)"],
      ["800000ffffff0000", "-11 (Resource temporarily unavailable)"]
    ] as const) {
      const setup = (name: string) => {
        image(name, false)
        poke(name, be64(name, be64(name, 40)) & 0xfffffffffe00, Buffer.from(entry, "hex"))
      }
      const { stderr } = both(setup, (name) => ["snapshot", "-c", "test", name], false)
      expect(stderr).toBe(`qemu-img: Could not create snapshot 'test': ${expected}\n`)
    }
  })

  it("amend -o compat=0.10 with a bad snapshot L1 table: QEMU's two messages, nothing changed", () => {
    for (const [field, bytes, message] of [
      [0, "0000000000400200", "Snapshot L1 table offset invalid\nqemu-img: Failed to turn zero into data clusters: Invalid argument"],
      [8, "10000000", "Snapshot L1 table too large\nqemu-img: Failed to turn zero into data clusters: File too large"]
    ] as const) {
      const setup = (name: string) => {
        image(name, true)
        poke(name, be64(name, 64) + field, Buffer.from(bytes, "hex"))
      }
      const outcome = both(setup, (name) => ["amend", "-o", "compat=0.10", name])
      expect([outcome.status, outcome.stderr]).toEqual([1, `qemu-img: ${message}\n`])
      expect(outcome.check).toContain("Leaked cluster 4 refcount=2 reference=1")
    }
  })

  it("qemu-io with overlap-check.inactive-l2=on over a bad snapshot L1 table: every write fails with its errno, the file stays as it was", () => {
    for (const [field, bytes, errno] of [
      [0, "0000000000400200", "Invalid argument"],
      [8, "10000000", "File too large"]
    ] as const) {
      const outputs: Record<string, string> = {}
      for (const [tool, name] of [["qemu", "qi.qcow2"], ["ts", "ti.qcow2"]] as const) {
        image(name, true)
        poke(name, be64(name, 64) + field, Buffer.from(bytes, "hex"))
        const before = fs.readFileSync(file(name))
        const args = ["-c", `open -o overlap-check.inactive-l2=on ${name}`, "-c", "write 0 4k"]
        const run = tool === "qemu" ? qemu(dir, "qemu-io", args, true) : qcow2(dir, ["io", ...args])
        outputs[tool] = `${run.status}\n${run.stdout}${run.stderr.replace(/^qcow2: /gm, "qemu-io: ")}`
        expect(fs.readFileSync(file(name)).equals(before), `${tool} ${bytes}`).toBe(true)
      }
      expect(outputs.ts).toBe(outputs.qemu)
      expect(outputs.ts).toBe(`1\nwrite failed: ${errno}\nqemu-io: Failed to flush the refcount block cache: ${errno}\n`)
    }
  })
})
