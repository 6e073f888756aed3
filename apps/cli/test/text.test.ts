import { describe, expect, it } from "vitest"
import { cAltHex, cFixed, cGeneral } from "../src/text/cformat.js"
import { cvtstr, sizeToStr, timestr } from "../src/text/sizes.js"
import { parseSize } from "../src/text/strtosz.js"
import { QDict, dumpHuman, qdictBucket, toQemuJson } from "../src/text/qjson.js"

describe("C number formatting", () => {
  it("%.Nf breaks exact ties to even like glibc", () => {
    expect(cFixed(0.0625, 3)).toBe("0.062")
    expect(cFixed(0.1875, 3)).toBe("0.188")
    expect(cFixed(19.4375, 3)).toBe("19.438")
    expect(cFixed(2.5, 0)).toBe("2")
    expect(cFixed(3.5, 0)).toBe("4")
    expect(cFixed(40, 6)).toBe("40.000000")
    expect(cFixed(0, 2)).toBe("0.00")
    expect(cFixed(1e-7, 3)).toBe("0.000")
    expect(cFixed(-1.25, 1)).toBe("-1.2")
  })
  it("%.3g matches glibc, including the switch to exponent form", () => {
    expect(cGeneral(1.25, 3)).toBe("1.25")
    expect(cGeneral(324, 3)).toBe("324")
    expect(cGeneral(100, 3)).toBe("100")
    expect(cGeneral(0, 3)).toBe("0")
    expect(cGeneral(999.5, 3)).toBe("1e+03")
    expect(cGeneral(2.19140625, 3)).toBe("2.19")
    expect(cGeneral(0.00001234, 3)).toBe("1.23e-05")
    expect(cGeneral(0.0001234, 3)).toBe("0.000123")
    expect(cGeneral(1.005, 3)).toBe("1")
  })
  it("%#x", () => {
    expect(cAltHex(0)).toBe("0")
    expect(cAltHex(65536)).toBe("0x10000")
  })
})

describe("qemu size texts", () => {
  it("size_to_str as in qemu-img info", () => {
    expect(sizeToStr(104857600)).toBe("100 MiB")
    expect(sizeToStr(331776)).toBe("324 KiB")
    expect(sizeToStr(1314816)).toBe("1.25 MiB")
    expect(sizeToStr(0)).toBe("0 B")
    expect(sizeToStr(512)).toBe("512 B")
    expect(sizeToStr(2297856)).toBe("2.19 MiB")
    expect(sizeToStr(1073741824)).toBe("1 GiB")
    expect(sizeToStr(8 * 2 ** 40)).toBe("8 TiB")
    expect(sizeToStr(1000)).toBe("0.977 KiB")
    expect(sizeToStr(999)).toBe("999 B")
  })
  it("cvtstr as in qemu-io", () => {
    expect(cvtstr(65536)).toBe("64 KiB")
    expect(cvtstr(40)).toBe("40 bytes")
    expect(cvtstr(0)).toBe("0 bytes")
    expect(cvtstr(250.276869)).toBe("250.276869 bytes")
    expect(cvtstr(0x1370000)).toBe("19.438 MiB")
    expect(cvtstr(512 * 2 ** 20)).toBe("512 MiB")
    expect(cvtstr(60.848 * 1024)).toBe("60.848 KiB")
  })
  it("timestr", () => {
    expect(timestr(0.004, false)).toBe("00.00 sec")
    expect(timestr(12.345, false)).toBe("12.35 sec")
    expect(timestr(0.001, true)).toBe("0:00:00.00")
    expect(timestr(3725.5, false)).toBe("1:02:05.50")
  })
})

describe("qemu_strtosz", () => {
  const ok = (s: string) => {
    const r = parseSize(s)
    return r.ok ? r.value : r.reason
  }
  it("accepts what qemu 7.2 accepts", () => {
    expect(ok("0")).toBe(0)
    expect(ok("512")).toBe(512)
    expect(ok("64k")).toBe(65536)
    expect(ok("64K")).toBe(65536)
    expect(ok("1M")).toBe(1048576)
    expect(ok("1m")).toBe(1048576)
    expect(ok("1.5k")).toBe(1536)
    expect(ok("1b")).toBe(1)
    expect(ok("0x200")).toBe(512)
    expect(ok("010")).toBe(10)
    expect(ok("1.")).toBe(1)
    expect(ok("1.k")).toBe(1024)
    expect(ok("8T")).toBe(8 * 2 ** 40)
    expect(ok("0.3k")).toBe(307)
    expect(ok("0.5b")).toBe("invalid")
  })
  it("rejects what qemu 7.2 rejects", () => {
    expect(ok("1x")).toBe("invalid")
    expect(ok("1.5")).toBe("invalid")
    expect(ok("1.5b")).toBe("invalid")
    expect(ok("1s")).toBe("invalid")
    expect(ok("-1")).toBe("invalid")
    expect(ok("")).toBe("invalid")
    expect(ok("1e3")).toBe("invalid")
    expect(ok("1.5e3k")).toBe("invalid")
    expect(ok("0x1.5k")).toBe("invalid")
    expect(ok("9E")).toBe("range")
  })
  it("flags hex with a unit (qemu warns)", () => {
    const r = parseSize("0x10k")
    expect(r).toEqual({ ok: true, value: 16384, hexWithSuffix: true })
  })
})

describe("QDict order and JSON layout", () => {
  it("bucket order reproduces qemu-img info's field order", () => {
    const d = QDict.of([
      ["filename", "a.qcow2"],
      ["format", "qcow2"],
      ["dirty-flag", false],
      ["actual-size", 331776],
      ["virtual-size", 104857600],
      ["cluster-size", 65536]
    ])
    expect(toQemuJson(d)).toBe(
      [
        "{",
        '    "virtual-size": 104857600,',
        '    "filename": "a.qcow2",',
        '    "cluster-size": 65536,',
        '    "format": "qcow2",',
        '    "actual-size": 331776,',
        '    "dirty-flag": false',
        "}"
      ].join("\n")
    )
  })
  it("prints empty lists the way qemu does", () => {
    const d = QDict.of([["flags", []], ["name", "b1"]])
    expect(toQemuJson([d])).toBe('[\n    {\n        "flags": [\n        ],\n        "name": "b1"\n    }\n]')
  })
  it("escapes like qemu's json writer", () => {
    expect(toQemuJson("a\"b\\c\n\u00e9\u{1F600}")).toBe('"a\\"b\\\\c\\n\\u00E9\\uD83D\\uDE00"')
  })
  it("orders a bucket collision newest first", () => {
    // find two keys sharing a bucket
    const seen = new Map<number, string>()
    let pair: [string, string] | undefined
    for (let i = 0; pair === undefined; i++) {
      const k = `k${i}`
      const b = qdictBucket(k)
      const other = seen.get(b)
      if (other !== undefined) pair = [other, k]
      else seen.set(b, k)
    }
    const d = QDict.of([[pair[0], 1], [pair[1], 2]])
    expect(toQemuJson(d)).toBe(`{\n    "${pair[1]}": 2,\n    "${pair[0]}": 1\n}`)
  })
  it("human dump matches qemu-img's bitmaps block", () => {
    const data = QDict.of([
      ["compat", "1.1"],
      ["lazy-refcounts", false],
      ["bitmaps", [QDict.of([["flags", ["auto"]], ["name", "b0"], ["granularity", 65536]]), QDict.of([["flags", []], ["name", "b1"], ["granularity", 131072]])]]
    ])
    expect(dumpHuman(data, 1)).toBe(
      [
        "    compat: 1.1",
        "    lazy refcounts: false",
        "    bitmaps:",
        "        [0]:",
        "            flags:",
        "                [0]: auto",
        "            name: b0",
        "            granularity: 65536",
        "        [1]:",
        "            flags:",
        "            name: b1",
        "            granularity: 131072",
        ""
      ].join("\n")
    )
  })
})
