/**
 * Command behaviour against the oracle, through the bundle: qemu-io command
 * sequences, qemu-img create lines, compare exit codes, convert to qcow2
 * (checked by qemu-img), check/repair, and usage errors.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

let dir = ""

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-commands-")
}, 120_000)

afterAll(() => {
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

const sub = (name: string): string => {
  const d = path.join(dir, name)
  fs.mkdirSync(d, { recursive: true })
  return d
}

/** qemu-io's timing figures vary run to run. */
const maskTimes = (s: string): string =>
  s.replace(/; \d\d\.\d\d sec \([^)]*\)/g, "; T").replace(/^(\d+,\d+),\d+:\d\d:\d\d\.\d\d,[\d.]+,[\d.]+$/gm, "$1,CSV")

describe("io: same output as qemu-io for the same commands", () => {
  const sequences: Record<string, ReadonlyArray<string>> = {
    "reads, patterns and dumps": [
      "read -v 0 40",
      "read -P 3 512k 64k",
      "read -P 4 512k 4k",
      "read -vP0 4k 32",
      "read -s 4 -l 100 -P 0 0 16",
      "read -l 4 -P 0 0 16",
      "read 0 2G",
      "read 30M 1",
      "read -P 0x100 0 1",
      "read 0 1x",
      "read -x 0 1",
      "read 1 2 3",
      "read",
      "r -C 0 512",
      "read -q 0 512"
    ],
    "writes, zeroes, discard, truncate": [
      "write -P 0x41 0 20",
      "read -v 0 32",
      "write -z 1M 64k",
      "write -z -u 640k 64k",
      "write -c 2M 64k",
      "write -z -P 1 0 1",
      "write -u 0 1",
      "w -q 0 1",
      "discard 512k 64k",
      "discard 30M 1",
      "write 30M 1",
      "flush",
      "truncate 30M",
      "length",
      "write -P 9 29M 64k",
      "map",
      "alloc 0 1M",
      "alloc 0",
      "info",
      "frob"
    ]
  }
  for (const [name, cmds] of Object.entries(sequences)) {
    it(name, () => {
      const d = sub(`io-${name.replace(/\W+/g, "-")}`)
      qemu(d, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "10M"])
      qemu(d, "qemu-io", ["-c", "write -P 3 512k 64k", "-c", "write -z 0 64k", "-c", "write -P 0 4k 4k", "base.qcow2"])
      fs.copyFileSync(path.join(d, "base.qcow2"), path.join(d, "a.qcow2"))
      fs.copyFileSync(path.join(d, "base.qcow2"), path.join(d, "b.qcow2"))
      const args = cmds.flatMap((c) => ["-c", c])
      const expected = qemu(d, "qemu-io", [...args, "a.qcow2"], true)
      const r = qcow2(d, ["io", ...args, "b.qcow2"])
      expect(maskTimes(r.stdout)).toBe(maskTimes(expected.stdout))
      expect(r.stderr.replace(/^qcow2: /gm, "qemu-io: ")).toBe(expected.stderr)
      expect(r.status).toBe(expected.status)
      expect(qemu(d, "qemu-img", ["compare", "a.qcow2", "b.qcow2"], true).stdout).toBe("Images are identical.\n")
      expect(qemu(d, "qemu-img", ["check", "b.qcow2"], true).status).toBe(0)
    })
  }
})

describe("create: qemu-img's Formatting line and an image qemu-img accepts", () => {
  const cases: ReadonlyArray<ReadonlyArray<string>> = [
    ["-f", "qcow2", "x.qcow2", "100M"],
    ["-f", "qcow2", "-o", "compat=0.10", "x.qcow2", "1M"],
    ["-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=8,lazy_refcounts=on", "x.qcow2", "64M"],
    ["-f", "qcow2", "-o", "extended_l2=on,compression_type=zstd", "x.qcow2", "1G"],
    ["-f", "qcow2", "-o", "cluster_size=2M,refcount_bits=1", "x.qcow2", "8T"],
    ["-f", "qcow2", "-o", "preallocation=metadata", "x.qcow2", "3M"],
    ["-f", "qcow2", "-o", "data_file=x.data,data_file_raw=on", "x.qcow2", "2M"],
    ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2"],
    ["-f", "qcow2", "-u", "-b", "nonexistent.qcow2", "-F", "qcow2", "x.qcow2", "5M"],
    ["-f", "qcow2", "x.qcow2", "1000001"],
    ["-q", "-f", "qcow2", "x.qcow2", "1M"],
    ["-f", "raw", "x.raw", "1M"]
  ]
  const errors: ReadonlyArray<ReadonlyArray<string>> = [
    ["-f", "qcow2", "-o", "cluster_size=3k", "x.qcow2", "1M"],
    ["-f", "qcow2", "-o", "frob=1", "x.qcow2", "1M"],
    ["-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "x.qcow2", "1M"],
    ["-f", "qcow2", "x.qcow2", "1x"],
    ["-f", "qcow2", "x.qcow2"],
    ["-f", "qcow2", "-b", "base.qcow2", "x.qcow2"],
    ["-f", "qcow2", "-b", "nonexistent.qcow2", "-F", "qcow2", "x.qcow2", "1M"]
  ]
  cases.forEach((args, i) => {
    it(args.join(" "), () => {
      const d = sub(`create-${i}`)
      const theirs = sub(`create-${i}/qemu`)
      for (const where of [d, theirs]) {
        qemu(where, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "3M"])
      }
      const expected = qemu(theirs, "qemu-img", ["create", ...args])
      const r = qcow2(d, ["create", ...args])
      expect(r.stderr).toBe("")
      expect(r.stdout).toBe(expected.stdout)
      expect(r.status).toBe(0)
      const file = args.find((a) => a.startsWith("x."))!
      const fmt = file.endsWith(".raw") ? "raw" : "qcow2"
      const info = (where: string) => {
        const j = JSON.parse(qemu(where, "qemu-img", ["info", "-f", fmt, "--output=json", file]).stdout)
        delete j["actual-size"]
        return j
      }
      expect(info(d)).toEqual(info(theirs))
      if (fmt === "qcow2" && !args.includes("-u")) {
        expect(qemu(d, "qemu-img", ["check", file], true).stdout).toMatch(/^No errors were found on the image\./)
      }
    })
  })
  errors.forEach((args, i) => {
    it(`fails like qemu-img: ${args.join(" ")}`, () => {
      const d = sub(`create-err-${i}`)
      const theirs = sub(`create-err-${i}/qemu`)
      for (const where of [d, theirs]) qemu(where, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "3M"])
      const expected = qemu(theirs, "qemu-img", ["create", ...args], true)
      const r = qcow2(d, ["create", ...args])
      expect(r.status).toBe(1)
      expect(r.stdout).toBe(expected.stdout)
      // The same message; after "Could not open 'NAME'" the operating system's wording may differ.
      const first = expected.stderr.split("\n")[0]!
      const prefix = first.includes("Could not open '") ? first.slice(0, first.indexOf("'", first.indexOf("Could not open '") + 16) + 1) : first
      expect(r.stderr.split("\n")[0]!.replace(/^qcow2: /, "qemu-img: ").startsWith(prefix), `${r.stderr} vs ${first}`).toBe(true)
    })
  })
})

describe("create encrypted images that qemu can open", () => {
  for (const format of ["luks", "aes"]) {
    it(format, () => {
      const d = sub(`create-${format}`)
      const secret = "secret,id=s0,data=pw"
      const opts = `encrypt.format=${format},encrypt.key-secret=s0${format === "luks" ? ",encrypt.iter-time=10" : ""}`
      const expected = qemu(d, "qemu-img", ["create", "-f", "qcow2", "--object", secret, "-o", opts, "theirs.qcow2", "2M"])
      const r = qcow2(d, ["create", "-f", "qcow2", "--object", secret, "-o", opts, "ours.qcow2", "2M"])
      expect(r.stderr).toBe("")
      expect(r.stdout).toBe(expected.stdout.replace("theirs.qcow2", "ours.qcow2"))
      const w = qcow2(d, ["io", "--object", secret, "-c", "write -P 0x5c 4k 8k", "ours.qcow2"])
      expect(w.status).toBe(0)
      const read = qemu(d, "qemu-io", ["--object", secret, "--image-opts", "-c", "read -P 0x5c 4k 8k", "-c", "read -P 0 0 4k", "driver=qcow2,file.filename=ours.qcow2,encrypt.key-secret=s0"], true)
      expect(read.stdout).not.toMatch(/Pattern verification failed/)
      expect(read.status).toBe(0)
      expect(JSON.parse(qemu(d, "qemu-img", ["info", "--output=json", "ours.qcow2"]).stdout)["encrypted"]).toBe(true)
    })
  }
})

describe("compare: qemu-img's messages and exit codes", () => {
  it("identical, different content, different sizes, strict, missing file", () => {
    const d = sub("compare")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "4M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -z 2M 64k", "a.qcow2"])
    qemu(d, "qemu-img", ["convert", "-O", "raw", "a.qcow2", "a.raw"])
    qemu(d, "qemu-img", ["convert", "-O", "qcow2", "a.qcow2", "b.qcow2"])
    qemu(d, "qemu-io", ["-c", "write -P 2 1000k 1", "b.qcow2"])
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "c.qcow2", "6M"])
    qemu(d, "qemu-img", ["convert", "-O", "qcow2", "-o", "cluster_size=4k", "a.qcow2", "d.qcow2"])
    qemu(d, "qemu-img", ["resize", "d.qcow2", "6M"])
    qemu(d, "qemu-io", ["-c", "write -P 3 5M 512", "d.qcow2"])
    const pairs: ReadonlyArray<ReadonlyArray<string>> = [
      ["a.qcow2", "a.raw"],
      ["a.qcow2", "b.qcow2"],
      ["-s", "a.qcow2", "a.raw"],
      ["-s", "a.qcow2", "c.qcow2"],
      ["a.qcow2", "d.qcow2"],
      ["c.qcow2", "a.qcow2"],
      ["a.qcow2", "missing.qcow2"]
    ]
    for (const p of pairs) {
      const expected = qemu(d, "qemu-img", ["compare", ...p], true)
      const r = qcow2(d, ["compare", ...p])
      expect({ args: p, out: r.stdout, status: r.status }).toEqual({ args: p, out: expected.stdout, status: expected.status })
    }
  })
})

describe("convert to qcow2 (write path)", () => {
  for (const [name, extra] of [
    ["plain", []],
    ["zlib compressed", ["-c"]],
    ["zstd compressed", ["-c", "-o", "compression_type=zstd"]],
    ["4k clusters, extended L2", ["-o", "cluster_size=16k,extended_l2=on"]]
  ] as const) {
    it(`${name}: qemu-img compare and check agree`, () => {
      const d = sub(`convert-${name.replace(/\W+/g, "-")}`)
      qemu(d, "qemu-img", ["create", "-f", "qcow2", "src.qcow2", "7M"])
      qemu(d, "qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 1500k 3k", "-c", "write -z 3M 1M", "-c", "write -P 4 6M 1M", "src.qcow2"])
      const r = qcow2(d, ["convert", "-O", "qcow2", ...extra, "src.qcow2", "out.qcow2"])
      expect(r.stderr).toBe("")
      expect(r.status).toBe(0)
      expect(qemu(d, "qemu-img", ["compare", "src.qcow2", "out.qcow2"], true).stdout).toBe("Images are identical.\n")
      const check = JSON.parse(qemu(d, "qemu-img", ["check", "--output=json", "out.qcow2"], true).stdout)
      expect(check["corruptions"] ?? 0).toBe(0)
      expect(check["leaks"] ?? 0).toBe(0)
      if ((extra as ReadonlyArray<string>).includes("-c")) expect(check["compressed-clusters"] ?? 0).toBeGreaterThan(0)
    })
  }
  it("several sources are concatenated like qemu-img's", () => {
    const d = sub("convert-multi")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "1M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 4k 8k", "a.qcow2"])
    qemu(d, "qemu-img", ["create", "-f", "raw", "b.raw", "512k"])
    qemu(d, "qemu-io", ["-f", "raw", "-c", "write -P 2 0 512", "b.raw"])
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "c.qcow2", "2M"])
    qemu(d, "qemu-io", ["-c", "write -P 3 2047k 1k", "c.qcow2"])
    qemu(d, "qemu-img", ["convert", "-O", "raw", "a.qcow2", "b.raw", "c.qcow2", "theirs.raw"])
    const r = qcow2(d, ["convert", "-O", "raw", "a.qcow2", "b.raw", "c.qcow2", "ours.raw"])
    expect(r.stderr).toBe("")
    expect(fs.readFileSync(path.join(d, "ours.raw")).equals(fs.readFileSync(path.join(d, "theirs.raw")))).toBe(true)
  })
  it("-S 0 allocates the whole target; the default leaves zero runs as holes", () => {
    const d = sub("convert-sparse")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "8M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 64k", "a.qcow2"])
    expect(qcow2(d, ["convert", "-S", "0", "-O", "raw", "a.qcow2", "full.raw"]).status).toBe(0)
    expect(qcow2(d, ["convert", "-O", "raw", "a.qcow2", "sparse.raw"]).status).toBe(0)
    expect(fs.statSync(path.join(d, "full.raw")).blocks * 512).toBeGreaterThanOrEqual(8 * 1024 * 1024)
    expect(fs.statSync(path.join(d, "sparse.raw")).blocks * 512).toBeLessThan(1024 * 1024)
    expect(fs.readFileSync(path.join(d, "full.raw")).equals(fs.readFileSync(path.join(d, "sparse.raw")))).toBe(true)
  })
  it("-n writes into an existing target, zeroing what the source has as zeros", () => {
    const d = sub("convert-n")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "1M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 64k", "a.qcow2"])
    fs.writeFileSync(path.join(d, "target.raw"), Buffer.alloc(1024 * 1024, 0xee))
    expect(qcow2(d, ["convert", "-n", "-O", "raw", "a.qcow2", "target.raw"]).status).toBe(0)
    const expected = Buffer.alloc(1024 * 1024)
    expected.fill(1, 0, 65536)
    expect(fs.readFileSync(path.join(d, "target.raw")).equals(expected)).toBe(true)
  })
  it("-B gives the qcow2 target a backing file and the same guest content", () => {
    const d = sub("convert-B")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "1M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 1M", "base.qcow2"])
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"])
    qemu(d, "qemu-io", ["-c", "write -P 2 64k 64k", "-c", "write -z 512k 64k", "top.qcow2"])
    const r = qcow2(d, ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2", "out.qcow2"])
    expect(r.stderr).toBe("")
    expect(qemu(d, "qemu-img", ["compare", "top.qcow2", "out.qcow2"], true).stdout).toBe("Images are identical.\n")
    const info = JSON.parse(qemu(d, "qemu-img", ["info", "--output=json", "out.qcow2"]).stdout)
    expect(info["backing-filename"]).toBe("base.qcow2")
    expect(qemu(d, "qemu-img", ["check", "out.qcow2"], true).status).toBe(0)
  })
  it("-p prints qemu-img's progress lines on stdout", () => {
    const d = sub("convert-progress")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "src.qcow2", "4M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 4M", "src.qcow2"])
    const r = qcow2(d, ["convert", "-p", "-O", "raw", "src.qcow2", "out.raw"])
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r/)
    expect(r.stdout.endsWith("    (100.00/100%)\r\n")).toBe(true)
  })
})

describe("check", () => {
  it("repairs a dirty lazy-refcount image like qemu-img check -r all", () => {
    const d = sub("check-repair")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "-o", "lazy_refcounts=on", "a.qcow2", "2M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 128k", "-c", "sigraise 9", "a.qcow2"], true)
    fs.copyFileSync(path.join(d, "a.qcow2"), path.join(d, "b.qcow2"))
    const expected = qemu(d, "qemu-img", ["check", "-r", "all", "a.qcow2"], true)
    const r = qcow2(d, ["check", "-r", "all", "b.qcow2"])
    expect(r.stdout).toBe(expected.stdout)
    expect(r.status).toBe(expected.status)
    expect(qemu(d, "qemu-img", ["check", "b.qcow2"], true).status).toBe(0)
  })
  it("reports leaks with exit status 3 and repairs them with -r leaks", () => {
    const d = sub("check-leaks")
    qemu(d, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "2M"])
    qemu(d, "qemu-io", ["-c", "write -P 1 0 128k", "a.qcow2"])
    // Give cluster 7 (past the data) a refcount nobody accounts for: refblock at 0x20000, 16-bit entries.
    const file = path.join(d, "a.qcow2")
    const bytes = fs.readFileSync(file)
    const big = Buffer.concat([bytes, Buffer.alloc(Math.max(0, 8 * 65536 - bytes.length))])
    big.writeUInt16BE(1, 0x20000 + 2 * 7)
    fs.writeFileSync(file, big)
    fs.copyFileSync(file, path.join(d, "b.qcow2"))
    for (const args of [["check"], ["check", "--output=json"], ["check", "-r", "leaks"]]) {
      const expected = qemu(d, "qemu-img", [...args, "a.qcow2"], true)
      const r = qcow2(d, [...args, "b.qcow2"])
      expect({ args, out: r.stdout.replace(/b\.qcow2/g, "a.qcow2"), status: r.status }).toEqual({ args, out: expected.stdout, status: expected.status })
    }
  })
})

describe("usage errors", () => {
  it("prints one line and exits 1", () => {
    const d = sub("usage")
    for (const args of [["info"], ["frob"], ["info", "--output=xml", "x"], ["convert", "-O", "vmdk", "a", "b"], ["check", "-r", "some", "x"], ["info", "missing.qcow2"], ["convert", "-S", "1000", "a", "b"]]) {
      const r = qcow2(d, args)
      expect(r.status, args.join(" ")).toBe(1)
      expect(r.stderr, args.join(" ")).toMatch(/^qcow2: /)
      expect(r.stderr).not.toMatch(/\n\s+at /)
    }
  })
})
