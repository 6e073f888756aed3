/**
 * Remaining qemu-img / qemu-io compatibility gaps, each held to QEMU 7.2:
 * a convert target whose final write-back or flush fails (blkdebug), and
 * -f given with --image-opts.
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const stderrOf = (run: Run) => run.stderr.replace(/^qcow2:/gm, "PROG:").replace(/^qemu-(?:img|io):/gm, "PROG:")

/** qemu-io's `-c` arguments for these commands. */
const ioCommands = (...list: ReadonlyArray<string>): Array<string> => list.flatMap((c) => ["-c", c])

/** Runs `args` through qcow2 and qemu-img in the test directory: exit status, stdout and stderr (program name aside) agree. */
const expectAsQemuImg = (args: ReadonlyArray<string>): void => {
  const ours = qcow2(dir, args)
  const theirs = qemu(dir, "qemu-img", args, true)
  expect({ args, status: ours.status, stdout: ours.stdout, stderr: stderrOf(ours) }).toEqual({ args, status: theirs.status, stdout: theirs.stdout, stderr: stderrOf(theirs) })
}

let dir: string
beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-gaps-")
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "src.qcow2", "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x61 0 1M", "src.qcow2"])
  // After the first guest data write, every flush of the node fails with EIO.
  fs.writeFileSync(path.join(dir, "flush-after-write.conf"), '[inject-error]\nevent = "write_aio"\niotype = "flush"\nerrno = "5"\n')
  // Every request after a flush starts fails with EIO.
  fs.writeFileSync(path.join(dir, "flush-to-os.conf"), '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\n')
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** `convert -n` into a blkdebug target made fresh by qemu-img, here and by qemu-img: both runs and both targets' `check` outputs. */
const convertBoth = (format: "raw" | "qcow2", conf: string, extra: ReadonlyArray<string>) => {
  const runs = (["ours", "theirs"] as const).map((who) => {
    const target = `${who}.${format}`
    qemu(dir, "qemu-img", ["create", "-q", "-f", format, target, "4M"])
    const args = ["convert", ...extra, "-n", "-O", format, "src.qcow2", `blkdebug:${conf}:${target}`]
    const run = who === "ours" ? qcow2(dir, args) : qemu(dir, "qemu-img", args, true)
    const check = format === "qcow2" ? qemu(dir, "qemu-img", ["check", target], true) : undefined
    return { run, check: check === undefined ? undefined : { status: check.status, stdout: check.stdout } }
  })
  return { ours: runs[0]!, theirs: runs[1]! }
}

describe("convert: the target's final write-back and flush", () => {
  it("a qcow2 target whose caches cannot be written back: QEMU's messages, exit 1 (qemu-img prints them and exits 0)", () => {
    const { ours, theirs } = convertBoth("qcow2", "flush-after-write.conf", ["-t", "writeback"])
    expect(stderrOf(ours.run)).toBe(
      "PROG: Failed to flush the L2 table cache: Input/output error\nPROG: Failed to flush the refcount block cache: Input/output error\n"
    )
    expect(stderrOf(ours.run)).toBe(stderrOf(theirs.run))
    expect([ours.run.status, theirs.run.status]).toEqual([1, 0])
    // What reached the disk is the same: refcounts without the L2 tables (leaks only).
    expect(ours.check).toEqual(theirs.check)
    expect(ours.check!.status).toBe(3)
  })

  it("with cache=unsafe (convert's default) flushes never reach the node: success, as for qemu-img", () => {
    const { ours, theirs } = convertBoth("qcow2", "flush-after-write.conf", [])
    expect([ours.run.status, stderrOf(ours.run)]).toEqual([0, ""])
    expect([theirs.run.status, stderrOf(theirs.run)]).toEqual([0, ""])
    expect(ours.check).toEqual(theirs.check)
    expect(qemu(dir, "qemu-img", ["compare", "src.qcow2", "ours.qcow2"]).status).toBe(0)
  })

  it("a raw target whose flush fails: exit 1 (qemu-img ignores it)", () => {
    const { ours, theirs } = convertBoth("raw", "flush-to-os.conf", ["-t", "writeback"])
    expect([ours.run.status, stderrOf(ours.run)]).toEqual([1, "PROG: error while flushing the target: Input/output error\n"])
    expect([theirs.run.status, stderrOf(theirs.run)]).toEqual([0, ""])
    const unsafe = convertBoth("raw", "flush-to-os.conf", [])
    expect([unsafe.ours.run.status, stderrOf(unsafe.ours.run)]).toEqual([0, ""])
    expect([unsafe.theirs.run.status, stderrOf(unsafe.theirs.run)]).toEqual([0, ""])
  })

  it("a plain raw target with -t writeback is synced and converts as before", () => {
    expect(qcow2(dir, ["convert", "-t", "writeback", "-O", "raw", "src.qcow2", "plain.raw"]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "src.qcow2", "plain.raw"]).status).toBe(0)
  })
})

/** The same qemu-img command line here and by qemu-img (program name masked), run in a directory holding `t.raw` and `t.qcow2`. */
const sameAsQemuImg = (args: ReadonlyArray<string>) => {
  const ours = qcow2(dir, args)
  const theirs = qemu(dir, "qemu-img", args, true)
  expect({ status: ours.status, stdout: ours.stdout, stderr: stderrOf(ours) }).toEqual({ status: theirs.status, stdout: theirs.stdout, stderr: stderrOf(theirs) })
}

describe("json: names with a protocol driver at the root, and names that cannot be created", () => {
  beforeAll(() => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", "t.raw", "4M"])
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "t.qcow2", "4M"])
  })
  const fileNode = (file: string) => `json:{"driver":"file","filename":"${file}"}`

  it("convert -n into json:{\"driver\":\"file\",…} is refused as qemu-img refuses it, and nothing is written", () => {
    sameAsQemuImg(["convert", "-n", "-O", "raw", "src.qcow2", fileNode("t.raw")])
    sameAsQemuImg(["convert", "-n", "-O", "qcow2", "src.qcow2", fileNode("t.qcow2")])
    expect(qemu(dir, "qemu-img", ["map", "--output=json", "-f", "raw", "t.raw"]).stdout).toContain('"data": false')
    // A format node over the file node is a target.
    sameAsQemuImg(["convert", "-n", "-O", "raw", "src.qcow2", 'json:{"driver":"raw","file":{"driver":"file","filename":"t.raw"}}'])
    expect(qemu(dir, "qemu-img", ["compare", "src.qcow2", "t.raw"]).status).toBe(0)
  })

  it("a top-level filename is no format node's file; the file node shows as format file", () => {
    sameAsQemuImg(["info", "-f", "raw", fileNode("t.raw")])
    sameAsQemuImg(["info", 'json:{"driver":"raw","filename":"t.raw"}'])
    sameAsQemuImg(["info", 'json:{"filename":"t.raw"}'])
    sameAsQemuImg(["info", "--output=json", fileNode("t.raw")])
    sameAsQemuImg(["info", fileNode("t.raw")])
  })

  it("json: names cannot be created (Unknown protocol 'json'); file: names create the file", () => {
    sameAsQemuImg(["convert", "-O", "raw", "src.qcow2", fileNode("new.raw")])
    sameAsQemuImg(["convert", "-O", "qcow2", "src.qcow2", fileNode("new.qcow2")])
    sameAsQemuImg(["create", "-f", "qcow2", fileNode("new.qcow2"), "1M"])
    sameAsQemuImg(["dd", "if=src.qcow2", `of=${fileNode("new.raw")}`])
    expect(fs.readdirSync(dir).filter((f) => f.startsWith("json:") || f.startsWith("new."))).toEqual([])
    expect(qcow2(dir, ["convert", "-O", "raw", "src.qcow2", "file:fp.raw"]).status).toBe(0)
    expect(qcow2(dir, ["dd", "if=src.qcow2", "of=file:dd.raw"]).status).toBe(0)
    for (const f of ["fp.raw", "dd.raw"]) expect(qemu(dir, "qemu-img", ["compare", "src.qcow2", f]).status).toBe(0)
  })
})

describe("-f null-co", () => {
  it("names QEMU's null-co device in every subcommand that takes -f, as qemu-img answers", () => {
    for (const args of [
      ["info", "-f", "null-co", "null-co://"],
      ["info", "-f", "null-co", "--output=json", "null-co://"],
      ["info", "-f", "null-co", "null-co://x"],
      ["info", "-f", "null-co", "src.qcow2"],
      ["map", "-f", "null-co", "null-co://"],
      ["map", "-f", "null-co", "--output=json", "null-co://"],
      ["check", "-f", "null-co", "null-co://"],
      ["compare", "-f", "null-co", "-F", "null-co", "null-co://", "null-co://"],
      ["measure", "-f", "null-co", "-O", "qcow2", "null-co://"],
      ["resize", "-f", "null-co", "null-co://", "2M"],
      ["commit", "-f", "null-co", "null-co://"],
      ["rebase", "-f", "null-co", "-u", "-b", "", "null-co://"],
      ["amend", "-f", "null-co", "-o", "size=1M", "null-co://"],
      ["convert", "-f", "null-co", "-O", "raw", "src.qcow2", "nc.raw"]
    ]) {
      sameAsQemuImg(args)
    }
  })

  it("converts and copies the device's content as qemu-img does (same layout, same content)", () => {
    for (const [args, format] of [
      [["convert", "-f", "null-co", "-O", "qcow2", "null-co://"], "qcow2"],
      [["dd", "-f", "null-co", "if=null-co://", "count=1", "bs=1M"], "raw"]
    ] as const) {
      const target = (who: string) => (args[0] === "dd" ? [`of=${who}.${format}`] : [`${who}.${format}`])
      const ours = qcow2(dir, [...args, ...target("nc-ours")])
      const theirs = qemu(dir, "qemu-img", [...args, ...target("nc-theirs")], true)
      expect([ours.status, ours.stdout, stderrOf(ours)]).toEqual([theirs.status, theirs.stdout, stderrOf(theirs)])
      const map = (who: string) => qemu(dir, "qemu-img", ["map", "--output=json", "-f", format, `${who}.${format}`]).stdout
      expect(map("nc-ours")).toBe(map("nc-theirs"))
      expect(qemu(dir, "qemu-img", ["compare", "-f", format, "-F", format, `nc-ours.${format}`, `nc-theirs.${format}`]).status).toBe(0)
    }
  })
})

describe("quorum as the top node", () => {
  const options = (threshold: number) =>
    [0, 1, 2].map((i) => `children.${i}.driver=qcow2,children.${i}.file.filename=q${i}.qcow2`).join(",") + `,driver=quorum,vote-threshold=${threshold}`
  /** Three children made by qemu-img, the same 64 KiB in each, and 64 KiB more in the third only. */
  const makeChildren = () => {
    for (const i of [0, 1, 2]) {
      qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", `q${i}.qcow2`, "4M"])
      qemu(dir, "qemu-io", ["-c", "write -P 5 0 64k", `q${i}.qcow2`])
    }
    qemu(dir, "qemu-io", ["-c", "write -P 7 64k 64k", "q2.qcow2"])
  }
  const masked = (run: Run) => ({ status: run.status, stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"), stderr: stderrOf(run) })

  it("info, map, check, compare and convert as qemu-img shows and does them", () => {
    makeChildren()
    for (const args of [["info"], ["info", "--output=json"], ["map"], ["map", "--output=json"], ["check"]]) sameAsQemuImg([...args, "--image-opts", options(2)])
    sameAsQemuImg(["compare", "--image-opts", options(2), options(2)])
    for (const who of ["ours", "theirs"]) {
      const args = ["convert", "-O", "raw", "--image-opts", options(2), `quorum-${who}.raw`]
      expect((who === "ours" ? qcow2(dir, args) : qemu(dir, "qemu-img", args)).status).toBe(0)
    }
    expect(fs.readFileSync(path.join(dir, "quorum-ours.raw")).equals(fs.readFileSync(path.join(dir, "quorum-theirs.raw")))).toBe(true)
  })

  it("qemu-io reads by vote and writes to every child, as qemu-io does", () => {
    for (const who of ["ours", "theirs"] as const) {
      makeChildren()
      const args = ["-c", "read -P 5 0 64k", "-c", "read -P 0 64k 64k", "-c", "info", "-c", "map", "-c", "write -P 9 128k 4k", "--image-opts", options(2)]
      const strict = ["-c", "read -P 5 0 64k", "-c", "read 64k 64k", "--image-opts", options(3)]
      const runs = [args, strict].map((a) => masked(who === "ours" ? qcow2(dir, ["io", ...a]) : qemu(dir, "qemu-io", a, true)))
      const children = [0, 1, 2].map((i) => qemu(dir, "qemu-img", ["convert", "-O", "raw", `q${i}.qcow2`, `child-${who}-${i}.raw`]).status)
      expect(children).toEqual([0, 0, 0])
      if (who === "ours") fs.writeFileSync(path.join(dir, "ours.json"), JSON.stringify(runs))
      else expect(JSON.parse(fs.readFileSync(path.join(dir, "ours.json"), "utf8"))).toEqual(runs)
    }
    for (const i of [0, 1, 2]) {
      expect(fs.readFileSync(path.join(dir, `child-ours-${i}.raw`)).equals(fs.readFileSync(path.join(dir, `child-theirs-${i}.raw`)))).toBe(true)
      expect(qemu(dir, "qemu-img", ["check", `q${i}.qcow2`]).status).toBe(0)
    }
  })
})

describe("overlap-check.inactive-l2 (iotest 060)", () => {
  /**
   * As iotest 060: a snapshot keeps the first L2 table (0x40000), a write
   * after it copies the table to 0x80000, whose first entry is then made to
   * point at the snapshot's table (COPIED set), so a write at guest 0 would
   * land on it. Made by qemu-img/qemu-io, then copied for each side.
   */
  const makeImage = (name: string) => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "64M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 512", name])
    qemu(dir, "qemu-img", ["snapshot", "-c", "foo", name])
    qemu(dir, "qemu-io", ["-c", "write -P 2 0 512", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from("8000000000040000", "hex"), 0, 8, 0x80000)
    fs.closeSync(fd)
  }
  /** Corruption lines without the host offset this toolkit adds (QEMU's event carries it, its message does not). */
  const io = (who: "ours" | "theirs", args: ReadonlyArray<string>) => {
    const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
    return { status: run.status, stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"), stderr: stderrOf(run).replace(/ at host offset \d+;/g, ";") }
  }
  const incompatible = (name: string) => JSON.parse(qemu(dir, "qemu-img", ["info", "--output=json", "-U", name]).stdout)["format-specific"].data.corrupt

  it("a write onto a snapshot's L2 table is refused and marks the image corrupt, as qemu-io does", () => {
    const runs = (["ours", "theirs"] as const).map((who) => {
      makeImage(`inactive-${who}.qcow2`)
      const run = io(who, ["-c", `open -o overlap-check=all inactive-${who}.qcow2`, "-c", "write -P 3 0 512"])
      return { run, corrupt: incompatible(`inactive-${who}.qcow2`) }
    })
    expect(runs[0]!.run.stderr).toContain("Preventing invalid write on metadata (overlaps with inactive L2 table)")
    expect(runs[0]).toEqual(runs[1])
    expect(runs[0]!.corrupt).toBe(true)
    // The snapshot's table is intact: reverting to it (after a repair) reads the first write back, as for qemu-img.
    for (const who of ["ours", "theirs"]) {
      qemu(dir, "qemu-img", ["check", "-r", "all", `inactive-${who}.qcow2`], true)
      qemu(dir, "qemu-img", ["snapshot", "-a", "foo", `inactive-${who}.qcow2`])
      expect(qemu(dir, "qemu-io", ["-r", "-c", "read -P 1 0 512", `inactive-${who}.qcow2`]).stdout).toContain("read 512/512 bytes at offset 0")
    }
  })

  it("a write into an L2 table shared with a snapshot copies it, with the check on, as qemu-io does", () => {
    const runs = (["ours", "theirs"] as const).map((who) => {
      const name = `shared-${who}.qcow2`
      qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "64M"])
      qemu(dir, "qemu-io", ["-c", "write -P 1 0 512", name])
      qemu(dir, "qemu-img", ["snapshot", "-c", "foo", name])
      const run = io(who, ["-c", `open -o overlap-check=all ${name}`, "-c", "write -P 2 0 512", "-c", "read -P 2 0 512"])
      return { run, check: qemu(dir, "qemu-img", ["check", name], true).stdout }
    })
    expect(runs[0]).toEqual(runs[1])
    expect(runs[0]!.run.status).toBe(0)
  })

  it("is not checked without the option (QEMU's default, cached), nor with overlap-check.inactive-l2=off", () => {
    for (const open of ["open", "open -o overlap-check=all,overlap-check.inactive-l2=off"]) {
      const runs = (["ours", "theirs"] as const).map((who) => {
        makeImage(`default-${who}.qcow2`)
        return { run: io(who, ["-c", `${open} default-${who}.qcow2`, "-c", "write -P 3 0 512"]), corrupt: incompatible(`default-${who}.qcow2`) }
      })
      expect(runs[0]).toEqual(runs[1])
      expect(runs[0]!.corrupt).toBe(false)
    }
  })
})

/**
 * The same damaged image made twice (qemu-img create of `size`, qemu-io
 * `setup`, then `damage` on its descriptor), `commands` run on one by
 * `qcow2 io` and on the other by qemu-io: exit code, stdout (timings
 * masked), stderr and the bytes left.
 */
const beside = (prefix: string, size: string, setup: ReadonlyArray<string>, damage: (fd: number) => void, commands: ReadonlyArray<string>) =>
  (["ours", "theirs"] as const).map((who) => {
    const name = `${prefix}-${who}.qcow2`
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, size])
    qemu(dir, "qemu-io", [...setup, name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    damage(fd)
    fs.closeSync(fd)
    const args = [...commands, name]
    const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
    return {
      status: run.status,
      stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"),
      stderr: stderrOf(run),
      bytes: fs.readFileSync(path.join(dir, name))
    }
  })

describe("damage met by discards and reads (iotest 060's cases)", () => {
  /** The first L2 table is at 0x40000; data written at guest 0 (and 64k) sits at 0x50000 (and 0x60000). */
  const L2 = 0x40000
  const unaligned = (fd: number, index: number, host: number) => {
    const entry = Buffer.alloc(8)
    entry.writeBigUInt64BE((1n << 63n) | BigInt(host))
    fs.writeSync(fd, entry, 0, 8, L2 + 8 * index)
  }

  it("a discard of an unaligned data cluster drops the entry and reports non-fatal corruption; a read of another is fatal", () => {
    const runs = beside("unaligned-free", "64M", ["-c", "write -P 1 0 128k"], (fd) => {
      unaligned(fd, 0, 0x52a00)
      unaligned(fd, 1, 0x62a00)
    }, ["-c", "discard 0 64k", "-c", "read 64k 64k", "-c", "read 64k 64k"])
    expect(runs[0]!.stderr).toContain(": Image is corrupt: Cannot free unaligned cluster 0x52a00; further non-fatal corruption events will be suppressed")
    expect(runs[0]!.stderr).toContain(": Marking image as corrupt: Cluster allocation offset 0x62a00 unaligned (L2 offset: 0x40000, L2 index: 0x1)")
    expect(runs[0]).toEqual(runs[1])
  })

  it("an L2 table allocated at cluster 0 (a zeroed refcount block counts it free) is refused as QEMU's l2_allocate refuses it", () => {
    const runs = beside("l2-at-zero", "64M", [], (fd) => {
      fs.writeSync(fd, Buffer.alloc(8), 0, 8, 0x20000)
    }, ["-c", "write 0 64k"])
    expect(runs[0]!.stderr).toContain(": Marking image as corrupt: Preventing invalid allocation of L2 table at offset 0; further corruption events")
    expect(runs[0]).toEqual(runs[1])
  })

  it("a read through an L2 table that overlaps the L1 table reads what that table names; a write there is refused", () => {
    // L1 entry 0 (at 0x30000) names 0x30000 itself as its L2 table.
    const runs = beside("l2-into-l1", "64M", [], (fd) => {
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 3, 0, 0]), 0, 8, 0x30000)
    }, ["-r", "-c", "read 0 512", "-c", "read -v 0 64"])
    expect(runs[0]!.stdout).toContain("read 512/512 bytes at offset 0")
    expect(runs[0]).toEqual(runs[1])
    const written = beside("l2-into-l1-write", "64M", [], (fd) => {
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 3, 0, 0]), 0, 8, 0x30000)
    }, ["-c", "write -P 0x2a 0 512"])
    expect(written[0]!.stderr).toContain("Preventing invalid write on metadata (overlaps with active L1 table); further corruption events")
    expect(written[0]).toEqual(written[1])
  })
})

describe("amend -o compat=0.10 over damage (iotest 060)", () => {
  /** Zero clusters to expand, and L1 entry 0 (at 0x30000) made unaligned, or L2 entry 0 (at 0x40000) a preallocated zero cluster at an unaligned offset. */
  for (const [what, at, entry] of [
    ["an unaligned L1 entry", 0x30000, [0x80, 0, 0, 0, 0, 4, 0x2a, 0]],
    ["an unaligned preallocated zero cluster", 0x40000, [0x80, 0, 0, 0, 0, 5, 0x2a, 1]]
  ] as const) {
    it(`fails on ${what} with the corruption event and 'Failed to turn zero into data clusters', as qemu-img does`, () => {
      const runs = (["ours", "theirs"] as const).map((who) => {
        const name = `amend-damage-${who}.qcow2`
        qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "64M"])
        qemu(dir, "qemu-io", ["-c", "write 0 64k", name])
        const fd = fs.openSync(path.join(dir, name), "r+")
        fs.writeSync(fd, Buffer.from(entry), 0, 8, at)
        fs.closeSync(fd)
        const args = ["amend", "-o", "compat=0.10", name]
        const run = who === "ours" ? qcow2(dir, args) : qemu(dir, "qemu-img", args, true)
        return { status: run.status, stdout: run.stdout, stderr: stderrOf(run), bytes: fs.readFileSync(path.join(dir, name)) }
      })
      expect(runs[0]!.stderr).toContain("PROG: Failed to turn zero into data clusters: Input/output error")
      expect(runs[0]!.stderr).toContain("PROG: Marking image as corrupt: ")
      expect(runs[0]).toEqual(runs[1])
    })
  }
})

describe("a copy-on-write request that waits while a fatal corruption event takes the image away (iotest 060)", () => {
  /**
   * Overlay over a backing file; guest 0 and 512M written (data 0x50000,
   * second L2 table after it), then guest 0's entry and the refcounts of
   * its cluster and of the second L2 table cleared. A 1k write at 0 stops
   * in its copy-on-write read (blkdebug opened over the image file); a
   * write at 64k is handed the second L2 table and marks the image
   * corrupt; resumed, the first fails with ENOMEDIUM, as QEMU's
   * do_perform_cow_read does.
   */
  it("fails with ENOMEDIUM when it resumes, as qemu-io's does", () => {
    const runs = (["ours", "theirs"] as const).map((who) => {
      // The same names in a directory of each side's own: the backing file's name is in the header.
      const here = path.join(dir, `cow-${who}`)
      fs.mkdirSync(here)
      const base = "base.qcow2"
      const top = "top.qcow2"
      qemu(here, "qemu-img", ["create", "-q", "-f", "qcow2", base, "1G"])
      qemu(here, "qemu-io", ["-c", "write 0k 64k", base])
      qemu(here, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "1G"])
      qemu(here, "qemu-io", ["-c", "write 0k 64k", "-c", "write 512M 64k", top])
      const fd = fs.openSync(path.join(here, top), "r+")
      fs.writeSync(fd, Buffer.alloc(8), 0, 8, 0x40000)
      fs.writeSync(fd, Buffer.alloc(2), 0, 2, 0x20000 + 10)
      fs.writeSync(fd, Buffer.alloc(2), 0, 2, 0x20000 + 12)
      fs.closeSync(fd)
      const args = ["-c", `open -o file.driver=blkdebug ${top}`, "-c", "break cow_read 0", "-c", "aio_write 0k 1k", "-c", "wait_break 0", "-c", "write 64k 64k", "-c", "resume 0"]
      const run = who === "ours" ? qcow2(here, ["io", ...args]) : qemu(here, "qemu-io", args, true)
      return { status: run.status, stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"), stderr: stderrOf(run), bytes: fs.readFileSync(path.join(here, top)) }
    })
    expect(runs[0]!.stdout).toContain("aio_write failed: No medium found")
    expect(runs[0]).toEqual(runs[1])
  })
})

describe("an allocation that lands on metadata (refcounts that undercount)", () => {
  /**
   * Guest 0 and 600M are written (L2 tables 0x40000 and 0x60000, data
   * 0x50000 and 0x70000), then the refcounts of 0x50000 and of the second
   * L2 table are zeroed. A write at 1M takes 0x50000 (live data, as QEMU
   * does); one at 2M, placed from the cached first L2 table, is handed the
   * second L2 table and must be refused, marking the image corrupt.
   */
  it("is refused and marks the image corrupt as qemu-io does, with the same bytes left", () => {
    const runs = beside("undercount", "1G", ["-c", "write -P 1 0 64k", "-c", "write -P 2 600M 64k"], (fd) => {
      for (const cluster of [5, 6]) fs.writeSync(fd, Buffer.alloc(2), 0, 2, 0x20000 + 2 * cluster)
    }, ["-c", "write -P 3 1M 64k", "-c", "write -P 4 2M 64k"])
    expect(runs[0]!.stderr).toContain("Preventing invalid write on metadata (overlaps with active L2 table)")
    expect(runs[0]!.status).toBe(1)
    expect(runs[0]).toEqual(runs[1])
  })
})

describe("requests after a fatal corruption event", () => {
  /**
   * An L2 entry points into the L1 table: the first write is refused and
   * marks the image corrupt; QEMU then takes the image out of service in
   * the process (bs->drv = NULL), so the writes, reads, discards and zero
   * writes after it fail with ENOMEDIUM, and a flush succeeds.
   */
  it("fail with 'No medium found' as qemu-io's do, with the same bytes left", () => {
    const runs = beside("ejected", "4M", ["-c", "write -P 1 0 64k", "-c", "write -P 2 1M 64k"], (fd) => {
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 0x03, 0, 0]), 0, 8, 0x40000)
    }, ["-c", "write -P 7 0 512", "-c", "write -P 8 1M 512", "-c", "read -P 2 1M 512", "-c", "flush", "-c", "discard 1M 64k", "-c", "write -z 2M 4k", "-c", "alloc 0 64k", "-c", "map", "-c", "length"])
    expect(runs[0]!.stdout).toContain("read failed: No medium found")
    expect(runs[0]!.stdout).toContain("getlength: No medium found")
    expect(runs[0]).toEqual(runs[1])
  })

  it("alloc and map on a damaged image opened read-only report the errno, as qemu-io's do", () => {
    const runs = beside("unaligned-l2", "4M", ["-c", "write -P 1 0 64k"], (fd) => {
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 0x04, 0x02, 0x00]), 0, 8, 0x30000)
    }, ["-r", "-c", "alloc 0 64k", "-c", "map", "-c", "length"])
    expect(runs[0]!.stdout).toContain("is_allocated failed: Input/output error")
    expect(runs[0]).toEqual(runs[1])
  })
})

describe("-f with --image-opts", () => {
  it("is refused by every subcommand that opens an image, with qemu-img's message and exit code", () => {
    const name = "driver=qcow2,file.filename=src.qcow2"
    const cases: ReadonlyArray<ReadonlyArray<string>> = [
      ["info", "-f", "qcow2", "--image-opts", name],
      ["map", "-f", "qcow2", "--image-opts", name],
      ["check", "-f", "qcow2", "--image-opts", name],
      ["compare", "-f", "qcow2", "--image-opts", name, name],
      ["compare", "-F", "qcow2", "--image-opts", name, name],
      ["convert", "-f", "qcow2", "--image-opts", name, "-O", "raw", "out.raw"],
      ["resize", "-f", "qcow2", "--image-opts", name, "8M"],
      ["amend", "-f", "qcow2", "--image-opts", "-o", "lazy_refcounts=on", name],
      ["measure", "-f", "qcow2", "--image-opts", "-O", "qcow2", name],
      ["bench", "-f", "qcow2", "--image-opts", "-c", "1", name],
      ["commit", "-f", "qcow2", "--image-opts", name],
      ["bitmap", "-f", "qcow2", "--image-opts", "--add", name, "b0"]
    ]
    for (const args of cases) {
      const theirs = qemu(dir, "qemu-img", args, true)
      const ours = qcow2(dir, args)
      expect({ status: ours.status, stderr: stderrOf(ours) }, args.join(" ")).toEqual({ status: theirs.status, stderr: stderrOf(theirs) })
      expect(theirs.status, args.join(" ")).not.toBe(0)
    }
    expect(fs.existsSync(path.join(dir, "out.raw"))).toBe(false)
    expect(qemu(dir, "qemu-img", ["check", "src.qcow2"], true).status).toBe(0)
  })
})

describe("map: zero clusters that keep their host cluster", () => {
  it("a run of them ends where their host offsets stop following each other, as in qemu-img map", () => {
    const d = path.join(dir, "zero-alloc")
    fs.mkdirSync(d)
    qemu(d, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "z.qcow2", "10M"])
    // Clusters 17-51 are allocated first, 0-16 and 52 after them; zeroing keeps their host clusters (QCOW2_CLUSTER_ZERO_ALLOC).
    qemu(d, "qemu-io", ["-c", "write -P 1 69632 139776", "-c", "write -P 1 0 213504", "-c", "write -z 0 217088", "-c", "write -P 1 217088 512", "z.qcow2"])
    for (const args of [["map", "--output=json", "z.qcow2"], ["map", "z.qcow2"]]) {
      const ours = qcow2(d, args)
      expect({ args, out: ours.stdout, status: ours.status }).toEqual({ args, out: qemu(d, "qemu-img", args).stdout, status: 0 })
    }
    expect(qcow2(d, ["map", "--output=json", "z.qcow2"]).stdout.split("\n").filter((line) => line.includes('"zero": true, "data": false, "offset"'))).toHaveLength(3)
  })
})

describe("resize --shrink over a refcount table entry no valid image has (iotest 060)", () => {
  /**
   * Refcount table entry 1 (at 0x10008) names a refcount block far past the
   * end of the file; with 1-bit refcounts entry 2 may also be made
   * unaligned, or it names an empty block inside the file. The shrink drops the empty blocks as QEMU's
   * qcow2_shrink_reftable does: the table is rewritten first, then freeing
   * the dropped block's own cluster finds no block covering it (or the
   * unaligned block stops the scan). The size stays; check and a second
   * shrink then answer as qemu-img's. (QEMU also gives the image an empty
   * L2 table on the way, so the files differ in length, not in content.)
   */
  for (const [what, options, entries] of [
    ["a block beyond 2^53", [], { 0x10008: [0, 0xff, 0xff, 0xff, 0, 0, 0, 0] }],
    ["a block at 64 GiB, which no block covers", ["-o", "refcount_bits=1"], { 0x10008: [0, 0, 0, 0x10, 0, 0, 0, 0] }],
    ["an unaligned block after it", ["-o", "refcount_bits=1"], { 0x10008: [0, 0, 0, 0x10, 0, 0, 0, 0], 0x10010: [0, 0, 0, 0, 0, 0, 2, 0] }],
    // An empty block in the file at 0x50000, whose cluster block 0 counts twice: "Invalid refcount", EINVAL.
    ["an empty block counted twice", [], { 0x10008: [0, 0, 0, 0, 0, 5, 0, 0], 0x2000a: [0, 2], 0x5fffff: [0] }]
  ] as const) {
    it(`fails like qemu-img on ${what}, leaving the image as QEMU leaves it`, () => {
      const runs = (["ours", "theirs"] as const).map((who) => {
        const name = `shrink-reftable-${who}.qcow2`
        qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", ...options, name, "64M"])
        const fd = fs.openSync(path.join(dir, name), "r+")
        for (const [at, bytes] of Object.entries(entries)) fs.writeSync(fd, Buffer.from(bytes), 0, bytes.length, Number(at))
        fs.closeSync(fd)
        const tool = (args: ReadonlyArray<string>) => {
          const run = who === "ours" ? qcow2(dir, args) : qemu(dir, "qemu-img", args, true)
          return { status: run.status, stdout: run.stdout.replace(/^Image end offset: \d+\n/m, ""), stderr: stderrOf(run) }
        }
        const shrink = tool(["resize", "--shrink", name, "32M"])
        const size = tool(["info", name]).stdout.match(/virtual size: .*/)?.[0]
        const check = tool(["check", name])
        return { shrink, size, check }
      })
      expect(runs[0]!.shrink.stderr).toMatch(/^PROG: Marking image as corrupt: .*\nPROG: Failed to discard unused refblocks: (?:Input\/output error|Invalid argument)\n$/)
      expect(runs[0]!.size).toBe("virtual size: 64 MiB (67108864 bytes)")
      expect(runs[0]).toEqual(runs[1])
    })
  }
})

describe("a free that fails only prints, as QEMU's qcow2_free_clusters does", () => {
  it("discarding a cluster whose refcount is already 0 succeeds ('qcow2_free_clusters failed: Invalid argument'), no corruption event, the image clean after", () => {
    // Data at 0x50000 (cluster 5) and 0x60000; cluster 5's refcount (at 0x2000a) zeroed.
    const runs = beside("free-underflow", "64M", ["-c", "write -P 3 0 128k"], (fd) => fs.writeSync(fd, Buffer.alloc(2), 0, 2, 0x2000a), ioCommands("discard 0 64k", "read -P 3 64k 64k", "write -P 5 256k 64k"))
    expect(runs[0]!.stderr).toBe("qcow2_free_clusters failed: Invalid argument\n")
    expect(runs[0]).toEqual(runs[1])
    expect(qemu(dir, "qemu-img", ["check", "free-underflow-ours.qcow2"]).stdout).toContain("No errors were found on the image.")
  })

  for (const length of [65536, 65537, 131072]) {
    it(`discard 0 ${length} over an unaligned refcount block: the event, one 'qcow2_free_clusters failed' per cluster, and the partial tail refused with ENOMEDIUM`, () => {
      const runs = beside(`free-unaligned-${length}`, "64M", ["-c", "write 0 128k"], (fd) => fs.writeSync(fd, Buffer.from([0, 0, 0, 0, 0, 0, 0x2a, 0]), 0, 8, 0x10000), [
        "-c",
        `discard 0 ${length}`,
        "-c",
        "read 0 64k"
      ])
      expect(runs[0]!.stderr).toContain("qcow2_free_clusters failed: Input/output error")
      expect(runs[0]).toEqual(runs[1])
    })
  }
})

describe("discards give the image file its space back, as QEMU's passthrough does", () => {
  /**
   * QEMU passes a cluster's discard on to the file once its refcount drops
   * to 0 for guest discards, zero writes that may unmap (qemu-io opens
   * with discard=unmap) and snapshot deletion (pass-discard-request and
   * pass-discard-snapshot are on by default): the file keeps its length
   * and its blocks go back to the file system.
   */
  const twin = (name: string, run: (who: "ours" | "theirs", file: string) => void) =>
    (["ours", "theirs"] as const).map((who) => {
      const file = `${name}-${who}.qcow2`
      qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"])
      qemu(dir, "qemu-io", ["-c", "write -P 1 0 8M", "-c", "write -c -P 2 8M 64k", "-c", "write -c -P 3 8256k 64k", file])
      run(who, file)
      const full = path.join(dir, file)
      // Where the file has data and holes, as qemu-img sees the file itself (SEEK_DATA/SEEK_HOLE).
      const extents = (JSON.parse(qemu(dir, "qemu-img", ["map", "--output=json", "-f", "raw", file]).stdout) as Array<{ start: number; length: number; data: boolean }>).map(
        (e) => [e.start, e.length, e.data]
      )
      return { bytes: createHash("sha256").update(fs.readFileSync(full)).digest("hex"), extents, blocks: fs.statSync(full).blocks }
    })

  it("qemu-io discard and write -z -u: the same bytes and the same holes as qemu-io leaves", () => {
    const runs = twin("pass-request", (who, file) => {
      const args = ["-c", "discard 0 4M", "-c", "write -z -u 4M 2M", "-c", "write -z 6M 1M", "-c", "discard 8M 64k", "-c", "discard 8256k 64k", file]
      if (who === "ours") qcow2(dir, ["io", ...args])
      else qemu(dir, "qemu-io", args)
    })
    // 8 MiB of data written, 6 MiB of it dropped: about 2 MiB stays in use.
    expect(runs[0]!.blocks * 512).toBeLessThan(3 << 20)
    expect({ bytes: runs[0]!.bytes, extents: runs[0]!.extents }).toEqual({ bytes: runs[1]!.bytes, extents: runs[1]!.extents })
  })

  it("snapshot -d: the same bytes and the same holes as qemu-img leaves", () => {
    const runs = twin("pass-snapshot", (who, file) => {
      qemu(dir, "qemu-img", ["snapshot", "-c", "s1", file])
      qemu(dir, "qemu-io", ["-c", "write -P 4 0 8M", file])
      if (who === "ours") qcow2(dir, ["snapshot", "-d", "s1", file])
      else qemu(dir, "qemu-img", ["snapshot", "-d", "s1", file])
    })
    expect({ bytes: runs[0]!.bytes, extents: runs[0]!.extents }).toEqual({ bytes: runs[1]!.bytes, extents: runs[1]!.extents })
  })
})

describe("a zero flag in a version 2 image, which has none (QEMU's 'Zero cluster entry found in pre-v3 image')", () => {
  /** compat=0.10, data at guest 0 (host 0x50000) and 64k; L2 entry 0 (at 0x40000) given the zero flag, with its cluster or without. */
  const damaged = (name: string, plain: boolean) => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x5a 0 64k", "-c", "write -P 0x33 64k 64k", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    if (plain) fs.writeSync(fd, Buffer.from([0, 0, 0, 0, 0, 0, 0, 1]), 0, 8, 0x40000)
    else fs.writeSync(fd, Buffer.from([1]), 0, 1, 0x40007)
    fs.closeSync(fd)
  }
  const io = (commands: ReadonlyArray<string>, plain: boolean) =>
    (["ours", "theirs"] as const).map((who) => {
      const name = `v2-zero-${plain ? "plain" : "alloc"}-${who}.qcow2`
      damaged(name, plain)
      const args = [...commands.flatMap((c) => ["-c", c]), name]
      const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
      return { status: run.status, stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"), stderr: stderrOf(run), bytes: fs.readFileSync(path.join(dir, name)) }
    })

  for (const plain of [false, true]) {
    const what = plain ? "without a cluster" : "with its cluster"
    it(`${what}: reads and writes through it fail and mark the image corrupt, as qemu-io's do`, () => {
      for (const command of ["read -P 0x5a 0 4k", "write -P 1 4k 4k", "write -z 0 4k"]) {
        const runs = io([command, "read 64k 4k"], plain)
        expect(runs[0]!.stderr).toContain("Zero cluster entry found in pre-v3 image (L2 offset: 0x40000, L2 index: 0)")
        expect({ command, ...runs[0] }).toEqual({ command, ...runs[1] })
      }
    })

    it(`${what}: a whole-cluster write, a discard or a whole-cluster zero write answers as qemu-io's do`, () => {
      for (const command of ["write -P 1 0 64k", "discard 0 64k", "write -z 0 64k"]) {
        const runs = io([command, "read 0 64k"], plain)
        if (command.startsWith("write -P")) expect(runs[0]!.stderr).toBe("")
        expect({ command, ...runs[0] }).toEqual({ command, ...runs[1] })
      }
    })

    it(`${what}: map and convert fail on it as qemu-img's do; check finds what qemu-img finds`, () => {
      const name = `v2-zero-img-${plain ? "plain" : "alloc"}.qcow2`
      damaged(name, plain)
      for (const args of [["map", name], ["convert", "-O", "raw", name, `${name}.raw`], ["check", name]]) expectAsQemuImg(args)
    })
  }
})

describe("the external data file bit without a data file named", () => {
  it("info shows the image; every command that does I/O is refused with qemu-img's message and exit code", () => {
    const name = "data-bit.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x5a 0 64k", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from([4]), 0, 1, 79)
    fs.closeSync(fd)
    for (const args of [["info", name], ["info", "--output=json", name], ["check", name], ["map", name], ["convert", "-O", "raw", name, "data-bit.raw"]]) expectAsQemuImg(args)
    expect(stderrOf(qcow2(dir, ["check", name]))).toBe("PROG: Could not open 'data-bit.qcow2': 'data-file' is required for this image\n")
  })
  it("info lists no snapshots then, as QEMU's qcow2_snapshot_list refuses for an image with a data file", () => {
    const name = "data-bit-snapshot.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "1M"])
    qemu(dir, "qemu-img", ["snapshot", "-c", "s1", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from([4]), 0, 1, 79)
    fs.closeSync(fd)
    for (const args of [["info", name], ["info", "--output=json", name]]) expectAsQemuImg(args)
    expect(qcow2(dir, ["info", name]).stdout).not.toContain("Snapshot list")
  })
})

describe("L2 entries with reserved bits set", () => {
  it("are read and written through as QEMU's I/O does (the bits ignored); check still reports them", () => {
    const runs = beside(
      "l2-reserved",
      "1M",
      ioCommands("write -P 0x5a 0 64k", "write -P 0x33 64k 64k"),
      (fd) => fs.writeSync(fd, Buffer.from([0x81]), 0, 1, 0x40000),
      ioCommands("read -P 0x5a 0 64k", "write -P 0x77 4k 4k", "read -P 0x77 4k 4k", "discard 64k 64k")
    )
    expect(runs[0]!.stderr).toBe("")
    expect(runs[0]).toEqual(runs[1])
    const name = "l2-reserved-ours.qcow2"
    for (const args of [["map", name], ["check", name]]) expectAsQemuImg(args)
  })
})

describe("header fields qcow2_do_open refuses", () => {
  /** A fresh 1 MiB image (`compat`: v2 or v3) holding data, with `patches` (offset, bytes) written over its header. */
  const damaged = (name: string, compat: "0.10" | "1.1", patches: ReadonlyArray<readonly [number, ReadonlyArray<number>]>) => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", `compat=${compat}`, name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 0x5a 0 64k", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    for (const [at, bytes] of patches) fs.writeSync(fd, Buffer.from(bytes), 0, bytes.length, at)
    fs.closeSync(fd)
  }
  const cases: ReadonlyArray<readonly [string, "0.10" | "1.1", ReadonlyArray<readonly [number, ReadonlyArray<number>]>, string]> = [
    // compression_type 2 with the incompatible bit: QEMU knows zlib and zstd only (ENOTSUP, even for check).
    ["unknown-compression.qcow2", "1.1", [[79, [8]], [104, [2]]], "qcow2: unknown compression type: 2"],
    ["bit-without-type.qcow2", "1.1", [[79, [8]]], "qcow2: Compression type incompatible feature bit must not be set"],
    ["type-without-bit.qcow2", "1.1", [[104, [1]]], "qcow2: Compression type incompatible feature bit must be set"],
    // The compression type is validated before the refcount width.
    ["type-before-width.qcow2", "1.1", [[104, [1]], [99, [7]]], "qcow2: Compression type incompatible feature bit must be set"],
    ["crypt-method-3.qcow2", "1.1", [[35, [3]]], "Unsupported encryption method 3"],
    ["crypt-method-5-v2.qcow2", "0.10", [[35, [5]]], "Unsupported encryption method 5"]
  ]
  it.each(cases)("%s: every command fails as qemu-img's does", (name, compat, patches, message) => {
    damaged(name, compat, patches)
    for (const args of [["info", name], ["check", name], ["check", "-r", "all", name], ["map", name], ["convert", "-O", "raw", name, `${name}.raw`]]) expectAsQemuImg(args)
    expect(stderrOf(qcow2(dir, ["info", name]))).toBe(`PROG: Could not open '${name}': ${message}\n`)
  })
})

describe("convert's read error names the block-status extent that fails", () => {
  it("a compressed flag set on one cluster of a run of data: the error is at that cluster, as qemu-img reads extent by extent", () => {
    const name = "flagged-compressed.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", name, "8M"])
    qemu(dir, "qemu-io", ["-c", "write -P 7 5M 512k", name])
    // Guest cluster 1306 (5 MiB + 104 KiB), the run's 27th: L1 entry 2, L2 entry 282 (512 entries per 4 KiB table).
    const bytes = fs.readFileSync(path.join(dir, name))
    const l2 = Number(bytes.readBigUInt64BE(Number(bytes.readBigUInt64BE(40)) + 8 * 2) & 0x00fffffffffffe00n)
    const at = l2 + 8 * 282
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from([bytes[at]! | 0x40]), 0, 1, at)
    fs.closeSync(fd)
    expectAsQemuImg(["convert", "-O", "raw", name, "flagged-compressed.raw"])
    expect(stderrOf(qcow2(dir, ["convert", "-O", "raw", name, "flagged-compressed.raw"]))).toBe("PROG: error while reading at byte 5349376: Input/output error\n")
  })
})

describe("writes over L2 entries with an unaligned host offset", () => {
  /** Entry 1 of the first L2 table (0x40000) set to `entry`, over data written at 0-256k. */
  const over = (prefix: string, entry: bigint, commands: ReadonlyArray<string>) => {
    const runs = beside(
      prefix,
      "1M",
      ioCommands("write -P 1 0 256k"),
      (fd) => {
        const bytes = Buffer.alloc(8)
        bytes.writeBigUInt64BE(entry)
        fs.writeSync(fd, bytes, 0, 8, 0x40008)
      },
      commands
    )
    expect(runs[0]).toEqual(runs[1])
    for (const who of ["ours", "theirs"]) expectAsQemuImg(["check", `${prefix}-${who}.qcow2`])
    return runs[0]!
  }
  it("a cluster the image does not own, written whole, gets a new cluster; the old offset is reported, not freed", () => {
    const run = over("unowned-whole", 0x60200n, ioCommands("write -P 0x77 64k 64k", "read -P 0x77 64k 64k"))
    expect(run.stderr).toBe("PROG: Image is corrupt: Cannot free unaligned cluster 0x60200; further non-fatal corruption events will be suppressed\n")
    expect(run.status).toBe(0)
  })
  it("inside a longer write too, and with the zero flag (QEMU's preallocated zero cluster)", () => {
    over("unowned-run", 0x60200n, ioCommands("write -P 0x77 0 192k"))
    over("unowned-zero-flag", 0x60201n, ioCommands("write -P 0x77 64k 64k"))
  })
  it("written in part, or owned (COPIED), it fails as qemu-io's write does", () => {
    expect(over("unowned-part", 0x60200n, ioCommands("write -P 0x77 68k 4k")).stderr).toContain("Cluster allocation offset 0x60200 unaligned")
    over("unowned-tail", 0x60200n, ioCommands("write -P 0x77 0 100k"))
    expect(over("owned-whole", (1n << 63n) | 0x60200n, ioCommands("write -P 0x77 64k 64k")).stderr).toContain("Data cluster offset 0x60200 unaligned")
  })
  it("a zero write without unmapping ORs the zero flag into the entry as it is (reserved and damaged bits kept); with unmapping it frees", () => {
    over("zero-unaligned", 0x60200n, ioCommands("write -z 64k 64k"))
    over("zero-reserved", (1n << 63n) | (1n << 56n) | 0x60000n, ioCommands("write -z 64k 64k"))
    over("zero-unmap-unaligned", 0x60200n, ioCommands("write -z -u 64k 64k"))
  })
  it("on a version 2 image a zero flag is refused before the offset is looked at", () => {
    const runs = (["ours", "theirs"] as const).map((who) => {
      const name = `v2-zero-unaligned-${who}.qcow2`
      qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", name, "1M"])
      qemu(dir, "qemu-io", ["-c", "write -P 1 0 256k", name])
      const fd = fs.openSync(path.join(dir, name), "r+")
      fs.writeSync(fd, Buffer.from([0, 0, 0, 0, 0, 6, 2, 1]), 0, 8, 0x40008)
      fs.closeSync(fd)
      const args = ["-c", "read -P 1 64k 4k", name]
      const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
      return { status: run.status, stdout: run.stdout, stderr: stderrOf(run), bytes: fs.readFileSync(path.join(dir, name)) }
    })
    expect(runs[0]!.stderr).toContain("Zero cluster entry found in pre-v3 image (L2 offset: 0x40000, L2 index: 0x1)")
    expect(runs[0]).toEqual(runs[1])
  })
})

describe("block status over a refcount table QEMU cannot read", () => {
  it("the metadata-preallocation probe's failure is not an error: map and convert read as qemu-img's do", () => {
    const name = "reftable-on-l2.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", name, "4M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 1M 64k", name])
    // The refcount table offset points at the L2 table: its entries (COPIED set) are refcount block offsets past 2^63.
    const bytes = fs.readFileSync(path.join(dir, name))
    const l1 = Number(bytes.readBigUInt64BE(40))
    let l2 = 0n
    for (let i = 0; l2 === 0n; i++) l2 = bytes.readBigUInt64BE(l1 + 8 * i) & 0x00fffffffffffe00n
    const fd = fs.openSync(path.join(dir, name), "r+")
    const offset = Buffer.alloc(8)
    offset.writeBigUInt64BE(l2)
    fs.writeSync(fd, offset, 0, 8, 48)
    fs.closeSync(fd)
    for (const args of [["map", "--output=json", name], ["convert", "-O", "raw", name, "reftable-on-l2.raw"], ["info", name]]) expectAsQemuImg(args)
  })
  it("an unaligned refcount block found by the probe is a non-fatal corruption event, and map and convert go on", () => {
    const name = "refblock-unaligned.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 64k", name])
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from([0, 0, 0, 0, 0, 2, 2, 0]), 0, 8, 0x10000)
    fs.closeSync(fd)
    for (const args of [["map", "--output=json", name], ["convert", "-O", "raw", name, "refblock-unaligned.raw"]]) expectAsQemuImg(args)
    const run = qcow2(dir, ["map", "--output=json", name])
    expect(run.status).toBe(0)
    expect(stderrOf(run)).toBe("PROG: Image is corrupt: Refblock offset 0x20200 unaligned (reftable index: 0); further non-fatal corruption events will be suppressed\n")
  })
})

describe("a run of extended L2 entries that meets an impossible subcluster bitmap", () => {
  it("fails the whole block-status query at the run's start, as QEMU's count_contiguous_subclusters does", () => {
    const name = "bitmap-in-run.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 256k", name])
    const bytes = fs.readFileSync(path.join(dir, name))
    const l2 = Number(bytes.readBigUInt64BE(Number(bytes.readBigUInt64BE(40))) & 0x00fffffffffffe00n)
    // Entry 2's bitmap: every subcluster both allocated and zero.
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.alloc(8, 0xff), 0, 8, l2 + 16 * 2 + 8)
    fs.closeSync(fd)
    for (const args of [["map", "--output=json", name], ["convert", "-O", "raw", name, "bitmap-in-run.raw"]]) expectAsQemuImg(args)
    expect(stderrOf(qcow2(dir, ["convert", "-O", "raw", name, "bitmap-in-run.raw"]))).toContain("error while reading block status at offset 0:")
  })
})

describe("a raw image whose format was probed, opened for writing", () => {
  const probedRaw = (name: string) => fs.writeFileSync(path.join(dir, name), Buffer.alloc(1 << 20))
  it("gets QEMU's raw driver warning in every command that opens it so", () => {
    for (const args of [["check", "-r", "all"], ["resize"], ["snapshot", "-c", "s"], ["commit"], ["amend", "-o", "size=1M"], ["check"], ["info"]] as const) {
      const name = `probed-${args.join("-")}.img`
      probedRaw(name)
      const full = args[0] === "resize" ? ["resize", name, "2M"] : [...args, name]
      expectAsQemuImg(full)
      probedRaw(name)
    }
    probedRaw("probed-commit.img")
    expect(stderrOf(qcow2(dir, ["commit", "probed-commit.img"]))).toContain("WARNING: Image format was not specified for 'probed-commit.img' and probing guessed raw.")
  })
  it("refuses a write that would make block 0 probe as another format (EPERM), as qemu-io does; -f raw lifts it", () => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "header-source.qcow2", "1M"])
    fs.writeFileSync(path.join(dir, "header.bin"), fs.readFileSync(path.join(dir, "header-source.qcow2")).subarray(0, 512))
    for (const [command, format] of [["write -s header.bin 0 512", []], ["write -s header.bin 0 4", []], ["write -s header.bin 0 8", []], ["write -P 7 256 512", []], ["write -s header.bin 0 512", ["-f", "raw"]]] as const) {
      const runs = (["ours", "theirs"] as const).map((who) => {
        const name = "probed-block0.img"
        probedRaw(name)
        const args = [...format, "-c", command, name]
        const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
        return { status: run.status, stdout: run.stdout.replace(/\d+\.\d+ sec \([^)]*\)/g, "X sec"), stderr: stderrOf(run), bytes: createHash("sha256").update(fs.readFileSync(path.join(dir, name))).digest("hex") }
      })
      expect(runs[0]).toEqual(runs[1])
    }
    probedRaw("probed-block0.img")
    expect(qcow2(dir, ["io", "-c", "write -s header.bin 0 512", "probed-block0.img"]).stdout).toBe("write failed: Operation not permitted\n")
  })
})

describe("map --output=json that fails part way", () => {
  it("has printed the separator after the last entry, as qemu-img prints it with the entry", () => {
    const name = "map-fails.qcow2"
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", name, "1M"])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -P 2 256k 64k", name])
    // L2 entry 6 (guest 384k): an unaligned offset, met after two entries are out.
    const fd = fs.openSync(path.join(dir, name), "r+")
    fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 0, 0x02, 0]), 0, 8, 0x40000 + 8 * 6)
    fs.closeSync(fd)
    expectAsQemuImg(["map", "--output=json", name])
    expect(qcow2(dir, ["map", "--output=json", name]).stdout).toMatch(/},\n$/)
  })
})
