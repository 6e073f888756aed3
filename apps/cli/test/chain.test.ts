/**
 * commit, rebase, convert -B, measure and dd against qemu-img 7.2: each
 * command runs here on one copy of a chain and by qemu-img on a twin; the
 * results must read the same (compare), map the same, check clean, and
 * print the same text with the same exit code.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, normalizeMap, qcow2, qemu, type MapRecord, type Run } from "./helpers.js"

const root = makeTempDir("qcow2-chain-")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

let counter = 0
const freshDir = (): string => {
  const dir = path.join(root, `t${counter++}`)
  fs.mkdirSync(dir)
  return dir
}

/** Runs a bash script (qemu-img/qemu-io set-up) in `dir`. */
const sh = (dir: string, script: string): void => {
  const r = spawnSync("bash", ["-euo", "pipefail", "-c", script], { cwd: dir, encoding: "utf8" })
  if (r.status !== 0) throw new Error(`set-up failed: ${r.stderr}`)
}

/** Our output in qemu-img's words (the program name is the only difference). */
const asQemu = (r: Run): { status: number; stdout: string; stderr: string } => ({
  status: r.status,
  stdout: r.stdout,
  stderr: r.stderr.replace(/^qcow2: /gm, "qemu-img: ").replace("Try 'qcow2 --help'", "Try 'qemu-img --help'")
})

const plain = (r: Run) => ({ status: r.status, stdout: r.stdout, stderr: r.stderr })

/**
 * qemu-img map of `file` (normalizeMap: QEMU's file-system hole probing
 * aside); `hostOffsets: false` drops where clusters landed, for commit,
 * whose order of allocation follows QEMU's concurrent mirror requests.
 */
const mapOf = (dir: string, file: string, hostOffsets = true): string =>
  JSON.stringify(
    normalizeMap(JSON.parse(qemu(dir, "qemu-img", ["map", "--output=json", file]).stdout) as MapRecord[]).map((r) =>
      hostOffsets ? r : { ...r, offset: r.offset === undefined ? undefined : "host" }
    )
  )

/** `a` and `b` read the same, map the same, and `a` checks clean. */
const expectTwins = (dir: string, a: string, b: string, hostOffsets = true): void => {
  expect(qemu(dir, "qemu-img", ["compare", a, b], true).stdout).toBe("Images are identical.\n")
  expect(mapOf(dir, a, hostOffsets)).toBe(mapOf(dir, b, hostOffsets))
  expect(qemu(dir, "qemu-img", ["check", a], true).stdout).toContain("No errors were found on the image.")
}

/** base (2M) <- mid (3M) <- top (4M, 4k clusters), each with some data; prefix p. */
const chain = (p: string) => `
qemu-img create -q -f qcow2 ${p}base.qcow2 2M
qemu-io -c "write -P 1 0 1M" ${p}base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b ${p}base.qcow2 -F qcow2 ${p}mid.qcow2 3M
qemu-io -c "write -P 2 256k 128k" -c "write -P 7 2M 64k" ${p}mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b ${p}mid.qcow2 -F qcow2 ${p}top.qcow2 4M
qemu-io -c "write -P 3 4k 8k" -c "write -z 512k 64k" -c "write -P 9 3M 4k" -c "write -P 0 3200k 64k" ${p}top.qcow2 >/dev/null
`

describe("commit", () => {
  for (const args of [[], ["-d"], ["-b", "BASE"], ["-p"]]) {
    it(`commit ${args.join(" ")} writes into the chain as qemu-img does`, () => {
      const dir = freshDir()
      sh(dir, chain("a") + chain("b"))
      const ours = qcow2(dir, ["commit", ...args.map((x) => x.replace("BASE", "abase.qcow2")), "atop.qcow2"])
      const theirs = qemu(dir, "qemu-img", ["commit", ...args.map((x) => x.replace("BASE", "bbase.qcow2")), "btop.qcow2"])
      expect(ours.status).toBe(0)
      expect(ours.stdout.endsWith("(100.00/100%)\r\nImage committed.\n") || ours.stdout === "Image committed.\n").toBe(true)
      if (!args.includes("-p")) expect(plain(ours)).toEqual(plain(theirs))
      for (const layer of ["base", "mid", "top"]) expectTwins(dir, `a${layer}.qcow2`, `b${layer}.qcow2`, false)
    })
  }

  it("an image this tool wrote commits the same with qemu-img and here", () => {
    const dir = freshDir()
    for (const p of ["a", "b"]) {
      expect(qcow2(dir, ["create", "-q", "-f", "qcow2", `${p}base.qcow2`, "1M"]).status).toBe(0)
      expect(qcow2(dir, ["io", "-c", "write -P 5 0 512k", `${p}base.qcow2`]).status).toBe(0)
      expect(qcow2(dir, ["create", "-q", "-f", "qcow2", "-b", `${p}base.qcow2`, "-F", "qcow2", `${p}top.qcow2`]).status).toBe(0)
      expect(qcow2(dir, ["io", "-c", "write -P 6 100k 200k", "-c", "write -z 700k 64k", `${p}top.qcow2`]).status).toBe(0)
    }
    expect(qcow2(dir, ["commit", "atop.qcow2"]).stdout).toBe("Image committed.\n")
    qemu(dir, "qemu-img", ["commit", "btop.qcow2"])
    expectTwins(dir, "abase.qcow2", "bbase.qcow2", false)
    expectTwins(dir, "atop.qcow2", "btop.qcow2", false)
  })

  it("fails as qemu-img does", () => {
    const dir = freshDir()
    sh(dir, chain(""))
    for (const args of [["base.qcow2"], ["-b", "nothere", "top.qcow2"], ["-t", "bogus", "top.qcow2"], ["top.qcow2", "mid.qcow2"]]) {
      const ours = asQemu(qcow2(dir, ["commit", ...args]))
      const theirs = qemu(dir, "qemu-img", ["commit", ...args], true)
      expect(ours.status).toBe(theirs.status)
      if (args.length !== 2 || args[0] === "-b" || args[0] === "-t") expect(ours.stderr).toBe(theirs.stderr)
    }
  })
})

describe("rebase", () => {
  const setup = (p: string) => `
qemu-img create -q -f qcow2 ${p}old.qcow2 4M
qemu-io -c "write -P 1 0 1M" -c "write -P 3 3M 512k" ${p}old.qcow2 >/dev/null
qemu-img create -q -f qcow2 ${p}new.qcow2 3M
qemu-io -c "write -P 1 0 512k" -c "write -P 5 1M 1M" ${p}new.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b ${p}old.qcow2 -F qcow2 ${p}ov.qcow2
qemu-io -c "write -P 2 256k 64k" ${p}ov.qcow2 >/dev/null
`
  const header = (dir: string, file: string) => fs.readFileSync(path.join(dir, file)).subarray(0, 65536)

  for (const args of [["-b", "NEW", "-F", "qcow2"], ["-b", ""], ["-u", "-b", "NEW", "-F", "qcow2"], ["-p", "-b", "NEW", "-F", "qcow2"]]) {
    it(`rebase ${args.join(" ")} gives qemu-img's image`, () => {
      const dir = freshDir()
      sh(dir, setup("a") + setup("b"))
      const ours = qcow2(dir, ["rebase", ...args.map((x) => x.replace("NEW", "anew.qcow2")), "aov.qcow2"])
      const theirs = qemu(dir, "qemu-img", ["rebase", ...args.map((x) => x.replace("NEW", "bnew.qcow2")), "bov.qcow2"])
      expect(ours.status).toBe(0)
      if (!args.includes("-p")) expect(plain(ours)).toEqual(plain(theirs))
      else expect(ours.stdout.endsWith("(100.00/100%)\r\n")).toBe(true)
      expect(qemu(dir, "qemu-img", ["compare", "aov.qcow2", "bov.qcow2"], true).stdout).toBe("Images are identical.\n")
      expect(mapOf(dir, "aov.qcow2")).toBe(mapOf(dir, "bov.qcow2"))
      expect(header(dir, "aov.qcow2").toString("latin1").replaceAll("anew", "bnew")).toBe(header(dir, "bov.qcow2").toString("latin1"))
      expect(qemu(dir, "qemu-img", ["check", "aov.qcow2"], true).status).toBe(0)
    })
  }

  it("rebases onto an image further down the chain (only what the images between change is copied)", () => {
    const dir = freshDir()
    sh(dir, chain("a") + chain("b"))
    expect(qcow2(dir, ["rebase", "-b", "abase.qcow2", "-F", "qcow2", "atop.qcow2"]).status).toBe(0)
    qemu(dir, "qemu-img", ["rebase", "-b", "bbase.qcow2", "-F", "qcow2", "btop.qcow2"])
    expect(qemu(dir, "qemu-img", ["compare", "atop.qcow2", "btop.qcow2"], true).stdout).toBe("Images are identical.\n")
    expect(mapOf(dir, "atop.qcow2")).toBe(mapOf(dir, "btop.qcow2"))
  })

  it("fails as qemu-img does", () => {
    const dir = freshDir()
    sh(dir, setup(""))
    for (const args of [["-b", "new.qcow2"], [], ["-b", "new.qcow2", "-F", "nosuch"], ["-T", "bogus", "-b", "new.qcow2", "-F", "qcow2"]]) {
      fs.copyFileSync(path.join(dir, "ov.qcow2"), path.join(dir, "o1.qcow2"))
      fs.copyFileSync(path.join(dir, "ov.qcow2"), path.join(dir, "o2.qcow2"))
      const ours = asQemu(qcow2(dir, ["rebase", ...args, "o1.qcow2"]))
      const theirs = qemu(dir, "qemu-img", ["rebase", ...args, "o2.qcow2"], true)
      expect(ours).toEqual(plain(theirs))
    }
    const missing = qcow2(dir, ["rebase", "-b", "nope.qcow2", "-F", "qcow2", "ov.qcow2"])
    expect(missing.status).toBe(1)
    expect(missing.stderr).toMatch(/^qcow2: Could not open new backing file 'nope.qcow2': /)
  })

  it("property: safe rebase keeps the content and matches qemu-img's allocation", () => {
    const write = fc.record({ pattern: fc.integer({ min: 0, max: 3 }), start: fc.integer({ min: 0, max: 63 }), sectors: fc.integer({ min: 1, max: 300 }) })
    const writes = fc.array(write, { maxLength: 4 })
    fc.assert(
      fc.property(writes, writes, writes, (oldW, newW, ovW) => {
        const dir = freshDir()
        const io = (file: string, ws: typeof oldW) =>
          ws.length === 0 ? "" : `qemu-io ${ws.map((w) => `-c "write -P ${w.pattern} ${w.start * 8192} ${w.sectors * 512}"`).join(" ")} ${file} >/dev/null\n`
        sh(
          dir,
          `qemu-img create -q -f qcow2 old.qcow2 1M\n${io("old.qcow2", oldW)}qemu-img create -q -f qcow2 new.qcow2 1M\n${io("new.qcow2", newW)}` +
            `qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 a.qcow2\n${io("a.qcow2", ovW)}cp a.qcow2 b.qcow2\n`
        )
        expect(qcow2(dir, ["rebase", "-b", "new.qcow2", "-F", "qcow2", "a.qcow2"]).status).toBe(0)
        qemu(dir, "qemu-img", ["rebase", "-b", "new.qcow2", "-F", "qcow2", "b.qcow2"])
        expectTwins(dir, "a.qcow2", "b.qcow2")
      }),
      { numRuns: 6 }
    )
  })
})

describe("convert -B, --salvage, -C", () => {
  const setup = `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c "write -P 1 0 2M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
qemu-io -c "write -P 2 512k 64k" -c "write -z 1M 128k" -c "write -P 0 3M 64k" -c "write -P 4 3500k 3k" ov.qcow2 >/dev/null
qemu-img convert -O qcow2 ov.qcow2 flat.qcow2
`
  it("convert -o backing_file= is convert -B, as in qemu-img (iotest 019)", () => {
    const dir = freshDir()
    sh(dir, setup)
    const args = (out: string) => ["convert", "-O", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "ov.qcow2", out]
    expect(plain(qcow2(dir, args("a.qcow2")))).toEqual({ status: 0, stdout: "", stderr: "" })
    qemu(dir, "qemu-img", args("b.qcow2"))
    expectTwins(dir, "a.qcow2", "b.qcow2", false)
  })

  for (const source of ["ov.qcow2", "flat.qcow2"]) {
    it(`convert -B of ${source} writes only what qemu-img writes`, () => {
      const dir = freshDir()
      sh(dir, setup)
      const ours = qcow2(dir, ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", source, "a.qcow2"])
      expect(plain(ours)).toEqual({ status: 0, stdout: "", stderr: "" })
      qemu(dir, "qemu-img", ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", source, "b.qcow2"])
      // Parallel copy workers allocate in the order their reads complete: the same clusters, not always at the same offsets.
      expectTwins(dir, "a.qcow2", "b.qcow2", false)
      expect(fs.statSync(path.join(dir, "a.qcow2")).size).toBe(fs.statSync(path.join(dir, "b.qcow2")).size)
    })
  }

  it("-C copies data as it is, like qemu-img's copy offloading", () => {
    const dir = freshDir()
    sh(dir, `qemu-img create -q -f qcow2 s.qcow2 4M\nqemu-io -c "write -P 1 0 64k" -c "write -P 0 64k 128k" s.qcow2 >/dev/null`)
    expect(qcow2(dir, ["convert", "-C", "-O", "qcow2", "s.qcow2", "a.qcow2"]).status).toBe(0)
    qemu(dir, "qemu-img", ["convert", "-C", "-O", "qcow2", "s.qcow2", "b.qcow2"])
    expectTwins(dir, "a.qcow2", "b.qcow2")
    for (const extra of [["-c"], ["-S", "4k"], ["--salvage"]]) {
      expect(asQemu(qcow2(dir, ["convert", "-C", ...extra, "-O", "qcow2", "s.qcow2", "x.qcow2"]))).toEqual(
        plain(qemu(dir, "qemu-img", ["convert", "-C", ...extra, "-O", "qcow2", "s.qcow2", "x.qcow2"], true))
      )
    }
  })

  it("--salvage reads past a broken compressed cluster with qemu-img's warnings", () => {
    const dir = freshDir()
    sh(dir, `qemu-img create -q -f qcow2 s.qcow2 1M\nqemu-io -c "write -c -P 7 64k 64k" -c "write -P 1 0 4k" s.qcow2 >/dev/null`)
    // Overwrite the start of the compressed data (its host offset from the L2 entry).
    const file = path.join(dir, "s.qcow2")
    const bytes = fs.readFileSync(file)
    const l1 = Number(bytes.readBigUInt64BE(40))
    const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n)
    const host = Number(bytes.readBigUInt64BE(l2 + 8) & ((1n << 54n) - 1n))
    const fd = fs.openSync(file, "r+")
    fs.writeSync(fd, Buffer.alloc(200, 0xff), 0, 200, host)
    fs.closeSync(fd)
    const ours = asQemu(qcow2(dir, ["convert", "--salvage", "-O", "raw", "s.qcow2", "a.raw"]))
    const theirs = qemu(dir, "qemu-img", ["convert", "--salvage", "-O", "raw", "s.qcow2", "b.raw"], true)
    expect(ours).toEqual(plain(theirs))
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "a.raw")), fs.readFileSync(path.join(dir, "b.raw")))).toBe(0)
    const failed = qcow2(dir, ["convert", "-O", "raw", "s.qcow2", "a.raw"])
    expect(failed.status).toBe(1)
    expect(failed.stderr).toMatch(/^qcow2: error while reading at byte 65536: /)
  })
})

describe("measure", () => {
  const dir = freshDir()
  sh(
    dir,
    `qemu-img create -q -f qcow2 a.qcow2 1G
qemu-io -c "write 512 512" -c "write 64k 64k" -c "write 128M 63k" a.qcow2 >/dev/null
qemu-img bitmap --add a.qcow2 b1
qemu-img bitmap --add -g 4k a.qcow2 bitmap-two
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
qemu-img create -q -f raw r.raw 8M
qemu-io -f raw -c "write 0 1M" r.raw >/dev/null`
  )
  const cases = [
    "--size 0 -O qcow2",
    "--size 2G -O qcow2",
    "--size 7E -O qcow2",
    "--size 7E",
    "--size 1T -O qcow2 -o cluster_size=4k",
    "-O qcow2 a.qcow2",
    "--output=json -O qcow2 a.qcow2",
    "-O qcow2 -o compat=0.10 a.qcow2",
    "-O qcow2 v2.qcow2",
    "-O qcow2 -o backing_file=x a.qcow2",
    "--output=json -O qcow2 -o preallocation=full a.qcow2",
    "a.qcow2",
    "-f raw -O qcow2 r.raw",
    "--size 1G -O qcow2 -o extended_l2=on,cluster_size=128k",
    "-O qcow2 -o refcount_bits=1 a.qcow2",
    "-O qcow2 --object secret,id=sec0,data=base -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 a.qcow2",
    "",
    "--size 2G a.qcow2",
    "a.qcow2 b",
    "-f qcow2",
    "-O foo a.qcow2",
    "-O qcow2 -o compat=0.9 a.qcow2",
    "--size -1",
    "--size 9E",
    "-o , --size 1M",
    "-O qcow2 -o foo=1 --size 1M",
    "-l snapshot.foo=bar",
    "--output foo --size 1M"
  ]
  for (const c of cases) {
    it(`measure ${c || "(nothing)"}`, () => {
      const args = c === "" ? [] : c.split(" ")
      expect(asQemu(qcow2(dir, ["measure", ...args]))).toEqual(plain(qemu(dir, "qemu-img", ["measure", ...args], true)))
    })
  }
})

describe("dd", () => {
  const dir = freshDir()
  sh(dir, `qemu-img create -q -f qcow2 in.qcow2 1M\nqemu-io -c "write -P 0xa 0 300k" -c "write -P 0xb 700k 10k" in.qcow2 >/dev/null`)
  const cases = [
    "if=in.qcow2 of=OUT",
    "if=in.qcow2 of=OUT -O qcow2",
    "bs=4k count=100 skip=3 if=in.qcow2 of=OUT",
    "bs=1000 count=7 if=in.qcow2 of=OUT -O qcow2",
    "bs=64k skip=100 if=in.qcow2 of=OUT",
    "bs=0 if=in.qcow2 of=OUT",
    "bs=x if=in.qcow2 of=OUT",
    "foo=1 if=in.qcow2 of=OUT",
    "if=in.qcow2",
    "junk",
    "if=in.qcow2 of=OUT -O vmdk2"
  ]
  for (const c of cases) {
    it(`dd ${c}`, () => {
      const ours = asQemu(qcow2(dir, ["dd", ...c.replace("OUT", "a.out").split(" ")]))
      const theirs = qemu(dir, "qemu-img", ["dd", ...c.replace("OUT", "b.out").split(" ")], true)
      expect(ours).toEqual(plain(theirs))
      const a = path.join(dir, "a.out")
      const b = path.join(dir, "b.out")
      expect(fs.existsSync(a)).toBe(fs.existsSync(b))
      if (fs.existsSync(a)) {
        expect(Buffer.compare(fs.readFileSync(a), fs.readFileSync(b))).toBe(0)
        fs.rmSync(a)
        fs.rmSync(b)
      }
    })
  }
})
