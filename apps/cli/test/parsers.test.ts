import { describe, expect, it } from "vitest"
import fc from "fast-check"
import { normalizeArgs, normalizeArgv } from "../src/argv.js"
import { formattingLine, parseCreateOptions, splitOptionList, toCreateOptions } from "../src/createopts.js"
import { breakline, getopt } from "../src/io/getopt.js"
import { hexDump, report } from "../src/io/report.js"
import { vmStateOffset } from "../src/io/commands/info.js"
import { jsonEntry, humanEntry, humanHeader, mergeable, type MapEntry } from "../src/commands/map.js"
import { checkExitCode, checkHuman, checkJson } from "../src/commands/check.js"
import { snapshotHeader, snapshotRow } from "../src/commands/info.js"
import { dataRuns, isZeroRange } from "../src/commands/convert.js"
import { firstDifference, firstNonZero } from "../src/commands/compare.js"
import { pathCombine } from "../src/names.js"
import { parseSecrets } from "../src/secrets.js"
import { toQemuJson } from "../src/text/qjson.js"
import type { CheckResult, Image } from "@qcow2/image"

describe("argv normalization (getopt habits for effect/cli)", () => {
  it("splits glued option values and flag clusters", () => {
    expect(normalizeArgs("convert", ["-fqcow2", "-Oraw", "-S4k", "a", "b"])).toEqual(["-f", "qcow2", "-O", "raw", "-S", "4k", "a", "b"])
    expect(normalizeArgs("convert", ["-pcO", "qcow2", "a", "b"])).toEqual(["-p", "-c", "-O", "qcow2", "a", "b"])
    expect(normalizeArgs("check", ["-qU", "-r", "all", "x"])).toEqual(["-q", "-U", "-r", "all", "x"])
  })
  it("never rewrites an option's value or what follows --", () => {
    expect(normalizeArgs("check", ["-r", "-qU", "x"])).toEqual(["-r", "-qU", "x"])
    expect(normalizeArgs("info", ["--output", "-json", "x"])).toEqual(["--output", "-json", "x"])
    expect(normalizeArgs("info", ["--", "-fqcow2"])).toEqual(["--", "-fqcow2"])
  })
  it("leaves unknown clusters for effect/cli to reject", () => {
    expect(normalizeArgs("info", ["-xyz", "f"])).toEqual(["-xyz", "f"])
    expect(normalizeArgv(["frob", "-fq"])).toEqual(["frob", "-fq"])
  })
})

describe("creation options", () => {
  it("splits -o lists like QemuOpts (',,' escapes, bare names are 'on')", () => {
    expect(splitOptionList("a=b,c=d,,e,lazy_refcounts")).toEqual([
      ["a", "b"],
      ["c", "d,e"],
      ["lazy_refcounts", "on"]
    ])
  })
  it("prints qemu-img's Formatting line in qemu's option order", () => {
    const p = parseCreateOptions("qcow2", ["compat=1.1,lazy_refcounts=on,extended_l2=on,compression_type=zstd,preallocation=falloc,data_file=x.data,data_file_raw=off", "backing_file=base.raw,backing_fmt=raw,size=1G"])
    expect(p.ok).toBe(true)
    if (!p.ok) return
    expect(formattingLine("x2.qcow2", "qcow2", p.values)).toBe(
      "Formatting 'x2.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=on preallocation=falloc compression_type=zstd size=1073741824 compat=1.1 backing_file=base.raw backing_fmt=raw data_file=x.data data_file_raw=off lazy_refcounts=on refcount_bits=16"
    )
    const q = parseCreateOptions("qcow2", ["cluster_size=0x1000,refcount_bits=0x10,lazy_refcounts=yes,size=1M"])
    expect(q.ok && formattingLine("y.qcow2", "qcow2", q.values)).toBe(
      "Formatting 'y.qcow2', fmt=qcow2 cluster_size=4096 extended_l2=off compression_type=zlib size=1048576 lazy_refcounts=yes refcount_bits=16"
    )
    const r = parseCreateOptions("raw", ["size=1M,preallocation=full"])
    expect(r.ok && formattingLine("y.raw", "raw", r.values)).toBe("Formatting 'y.raw', fmt=raw size=1048576 preallocation=full")
  })
  it("rejects unknown names and bad values with qemu's messages", () => {
    expect(parseCreateOptions("qcow2", ["frob=1"])).toEqual({ ok: false, message: "Invalid parameter 'frob'" })
    expect(parseCreateOptions("qcow2", ["lazy_refcounts=maybe"])).toEqual({ ok: false, message: "Parameter 'lazy_refcounts' expects 'on' or 'off'" })
    expect(parseCreateOptions("qcow2", ["refcount_bits=16k"])).toEqual({ ok: false, message: "Parameter 'refcount_bits' expects a number" })
    expect(parseCreateOptions("raw", ["cluster_size=1k"])).toEqual({ ok: false, message: "Invalid parameter 'cluster_size'" })
  })
  const build = (list: string, passphrase?: Uint8Array) => {
    const p = parseCreateOptions("qcow2", [list])
    if (!p.ok) throw new Error(p.message)
    return toCreateOptions(p.values, passphrase)
  }
  it("validates combinations like qcow2_co_create", () => {
    expect(build("cluster_size=3k")).toEqual({ ok: false, message: "Cluster size must be a power of two between 512 and 2048k" })
    expect(build("refcount_bits=3")).toEqual({ ok: false, message: "Refcount width must be a power of two and may not exceed 64 bits" })
    expect(build("compat=2")).toEqual({ ok: false, message: "Parameter 'version' does not accept value '2'" })
    expect(build("compat=0.10,lazy_refcounts=on")).toEqual({ ok: false, message: "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)" })
    expect(build("compression_type=lz4")).toEqual({ ok: false, message: "Parameter 'compression-type' does not accept value 'lz4'" })
    expect(build("extended_l2=on,cluster_size=4k")).toEqual({ ok: false, message: "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes" })
    expect(build("data_file_raw=on")).toEqual({ ok: false, message: "data-file-raw requires data-file" })
    expect(build("backing_fmt=qcow2")).toEqual({ ok: false, message: "Backing format cannot be used without backing file" })
    expect(build("encrypt.format=luks")).toEqual({ ok: false, message: "Parameter 'encrypt.key-secret' is required for cipher" })
  })
  it("maps values to the driver's CreateOptions", () => {
    const r = build("compat=v2,cluster_size=512,size=1M")
    expect(r).toEqual({
      ok: true,
      options: { size: 1048576, clusterSize: 512, compat: "0.10", refcountBits: 16, lazyRefcounts: false, extendedL2: false, compressionType: "zlib", preallocation: "off" }
    })
    const pass = new TextEncoder().encode("pw")
    const e = build("encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,size=1M", pass)
    expect(e.ok && e.options.encryption).toEqual({ format: "luks", passphrase: pass, cipherAlg: "aes-128", iterTimeMs: 10 })
  })
})

describe("secrets", () => {
  it("parses --object secret definitions", () => {
    const r = parseSecrets(["secret,id=s0,data=abc", "secret,id=s1,data=YWJj,format=base64"], undefined)
    expect(r.ok).toBe(true)
    if (!r.ok) return
    expect(new TextDecoder().decode(r.secrets.byId.get("s1"))).toBe("abc")
    expect(new TextDecoder().decode(r.secrets.passphrase)).toBe("abc")
    expect(parseSecrets(["iothread,id=x"], undefined).ok).toBe(false)
    expect(parseSecrets(["secret,data=x"], undefined).ok).toBe(false)
  })
})

describe("qemu-io command lines", () => {
  it("splits on spaces only", () => {
    expect(breakline("  write  -P   7  0   16 ")).toEqual(["write", "-P", "7", "0", "16"])
  })
  it("parses options GNU-style (permuted, clustered, glued values)", () => {
    expect(getopt("read", ["0", "16", "-v"], "bCl:pP:qs:v")).toEqual({ ok: true, result: { options: [["v", undefined]], operands: ["0", "16"] } })
    expect(getopt("read", ["-vP0", "0", "16"], "bCl:pP:qs:v")).toEqual({ ok: true, result: { options: [["v", undefined], ["P", "0"]], operands: ["0", "16"] } })
    expect(getopt("read", ["-P", "0", "--", "-1", "16"], "bCl:pP:qs:v")).toEqual({ ok: true, result: { options: [["P", "0"]], operands: ["-1", "16"] } })
    expect(getopt("read", ["-1", "1"], "bCl:pP:qs:v")).toEqual({ ok: false, message: "read: invalid option -- '1'" })
    expect(getopt("read", ["0", "1", "-P"], "bCl:pP:qs:v")).toEqual({ ok: false, message: "read: option requires an argument -- 'P'" })
  })
  it("dumps like qemu-io read -v", () => {
    const buf = new Uint8Array(40)
    buf.fill(0x41, 0, 20)
    expect(hexDump(buf, 0)).toBe(
      "00000000:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n" +
        "00000010:  41 41 41 41 00 00 00 00 00 00 00 00 00 00 00 00  AAAA............\n" +
        "00000020:  00 00 00 00 00 00 00 00  ........\n"
    )
    expect(hexDump(Uint8Array.of(0xcd, 0x20, 0x7a), 0x80000)).toBe("00080000:  cd 20 7a  ..z\n")
  })
  it("reports like qemu-io", () => {
    expect(report("read", 0.004, 0, 65536, 65536, 1, false)).toBe("read 65536/65536 bytes at offset 0\n64 KiB, 1 ops; 00.00 sec (15.625 MiB/sec and 250.0000 ops/sec)\n")
    expect(report("read", 0.0002, 0, 512, 512, 1, true)).toBe("512,1,0:00:00.00,2560000.000,5000.000\n")
  })
  it("computes qcow2's vm state offset", () => {
    const image = (size: number, cs: number, incompat = 0n) =>
      ({ format: "qcow2", clusterSize: cs, header: { header: { size, incompatibleFeatures: incompat } } }) as unknown as Image
    expect(vmStateOffset(image(20 * 2 ** 20, 65536))).toBe(512 * 2 ** 20)
    expect(vmStateOffset(image(20 * 2 ** 20, 65536, 16n))).toBe(256 * 2 ** 20)
    expect(vmStateOffset(image(2 ** 30 + 1, 65536))).toBe(3 * 512 * 2 ** 20)
  })
})

describe("map records", () => {
  const e = (start: number, length: number, more: Partial<MapEntry> = {}): MapEntry => ({ start, length, depth: 0, present: true, zero: false, data: true, ...more })
  it("prints qemu-img's JSON and human lines", () => {
    expect(jsonEntry(e(0, 65536, { offset: 327680 }))).toBe('{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680}')
    expect(jsonEntry(e(65536, 983040, { present: false, zero: true, data: false }))).toBe('{ "start": 65536, "length": 983040, "depth": 0, "present": false, "zero": true, "data": false}')
    expect(humanHeader()).toBe("Offset          Length          Mapped to       File\n")
    expect(humanEntry(e(0, 0x10000, { offset: 0x50000, filename: "a.qcow2" }))).toBe("0               0x10000         0x50000         a.qcow2\n")
  })
  it("merges only contiguous equal extents", () => {
    expect(mergeable(e(0, 10, { offset: 100 }), e(10, 10, { offset: 110 }))).toBe(true)
    expect(mergeable(e(0, 10, { offset: 100 }), e(10, 10, { offset: 200 }))).toBe(false)
    expect(mergeable(e(0, 10), e(10, 10, { depth: 1 }))).toBe(false)
    expect(mergeable(e(0, 0), e(0, 10))).toBe(false)
    expect(mergeable(e(0, 10, { offset: 0, filename: "a" }), e(10, 10, { offset: 10, filename: "b" }))).toBe(false)
  })
})

describe("check output", () => {
  const result = (over: Partial<CheckResult>): CheckResult => ({
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 393216,
    totalClusters: 16,
    allocatedClusters: 1,
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
    ...over
  })
  it("prints qemu-img's human report", () => {
    expect(checkHuman(result({ corruptions: 2 }))).toBe(
      "\n2 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n" +
        "1/16 = 6.25% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 393216\n"
    )
    expect(checkHuman(result({ leaks: 3, allocatedClusters: 4, fragmentedClusters: 4, compressedClusters: 4 }))).toBe(
      "\n3 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n" +
        "4/16 = 25.00% allocated, 100.00% fragmented, 100.00% compressed clusters\nImage end offset: 393216\n"
    )
    expect(checkHuman(result({ allocatedClusters: 0 }))).toBe("No errors were found on the image.\nImage end offset: 393216\n")
  })
  it("prints qemu-img's JSON (zero counters omitted, QDict order)", () => {
    expect(toQemuJson(checkJson("dirty.qcow2", "qcow2", result({ corruptions: 2 })))).toBe(
      '{\n    "image-end-offset": 393216,\n    "total-clusters": 16,\n    "corruptions": 2,\n    "check-errors": 0,\n    "allocated-clusters": 1,\n    "filename": "dirty.qcow2",\n    "format": "qcow2"\n}'
    )
  })
  it("exits 2 for corruption, 3 for leaks only, else 0", () => {
    expect(checkExitCode(result({ corruptions: 1, leaks: 1 }))).toBe(2)
    expect(checkExitCode(result({ leaks: 1 }))).toBe(3)
    expect(checkExitCode(result({}))).toBe(0)
  })
})

describe("snapshot rows", () => {
  it("lays out the table like qemu-img info", () => {
    expect(snapshotHeader()).toBe("ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT")
    const row = snapshotRow({
      l1TableOffset: 0,
      l1Size: 0,
      id: "1",
      name: "snap1",
      dateSeconds: 0,
      dateNanoseconds: 0,
      vmClockNanoseconds: 3_723_456_000_000n,
      vmStateSize: 0,
      icount: 0n,
      extraData: new Uint8Array(0)
    })
    expect(row.slice(0, 36)).toBe("1         snap1                 0 B ")
    expect(row.slice(55)).toBe(" 01:02:03.456          0")
  })
})

describe("convert helpers", () => {
  it("finds data runs at the sparse granularity", () => {
    const buf = Buffer.alloc(16384)
    buf[5000] = 1
    buf[16383] = 2
    expect(dataRuns(buf, 16384, 4096)).toEqual([
      [4096, 8192],
      [12288, 16384]
    ])
    expect(dataRuns(buf, 16384, 0)).toEqual([[0, 16384]])
    expect(dataRuns(Buffer.alloc(10000), 10000, 4096)).toEqual([])
    expect(dataRuns(buf, 5001, 4096)).toEqual([[4096, 5001]])
  })
  it("finds the same data runs as a block-by-block check, whatever the zero blocks and their lengths", () => {
    const granularity = 512
    fc.assert(
      fc.property(
        fc.array(fc.option(fc.integer({ min: 0, max: granularity - 1 }), { freq: 2 }), { minLength: 0, maxLength: 48 }),
        fc.integer({ min: 0, max: granularity - 1 }),
        (blocks, cut) => {
          // Each block is zero (null) or holds one non-zero byte at the given place; the last block may be cut short.
          const length = Math.max(0, blocks.length * granularity - cut)
          const buf = Buffer.alloc(blocks.length * granularity)
          blocks.forEach((at, i) => {
            if (at !== null) buf[i * granularity + at] = 0x5a
          })
          const expected: Array<[number, number]> = []
          for (let pos = 0; pos < length; pos += granularity) {
            const zero = buf.subarray(pos, Math.min(length, pos + granularity)).every((x) => x === 0)
            const last = expected[expected.length - 1]
            if (zero) continue
            if (last !== undefined && last[1] === pos) last[1] = Math.min(length, pos + granularity)
            else expected.push([pos, Math.min(length, pos + granularity)])
          }
          expect(dataRuns(buf, length, granularity)).toEqual(expected)
        }
      ),
      { numRuns: 1000 }
    )
  })
  it("tells zero ranges like a byte-by-byte check, wherever the non-zero byte is", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 300 }), fc.option(fc.integer({ min: 0, max: 299 })), fc.integer({ min: 1, max: 255 }), (a, b, at, value) => {
        const buf = new Uint8Array(300)
        if (at !== null) buf[at] = value
        const start = Math.min(a, b)
        const end = Math.max(a, b)
        const expected = buf.subarray(start, end).every((x) => x === 0)
        expect(isZeroRange(buf, start, end)).toBe(expected)
      }),
      { numRuns: 2000 }
    )
  })
  it("reports the first differing 512-byte sector", () => {
    const a = new Uint8Array(4096)
    const b = new Uint8Array(4096)
    expect(firstDifference(a, b, 4096)).toBe(-1)
    b[1500] = 1
    expect(firstDifference(a, b, 4096)).toBe(1024)
    expect(firstNonZero(b, 4096)).toBe(1024)
    expect(firstNonZero(a, 4096)).toBe(-1)
  })
})

describe("backing file names", () => {
  it("combines names textually like QEMU's path_combine", () => {
    expect(pathCombine("top.qcow2", "mid.qcow2")).toBe("mid.qcow2")
    expect(pathCombine("sub/t2.qcow2", "../mid.qcow2")).toBe("sub/../mid.qcow2")
    expect(pathCombine("/tmp/q/sub/t2.qcow2", "../mid.qcow2")).toBe("/tmp/q/sub/../mid.qcow2")
    expect(pathCombine("/a/b.qcow2", "/abs.qcow2")).toBe("/abs.qcow2")
    expect(pathCombine("http://h/d/top.qcow2", "base.qcow2")).toBe("http://h/d/base.qcow2")
    expect(pathCombine("top.qcow2", "nbd:host:10809")).toBe("nbd:host:10809")
  })
})
