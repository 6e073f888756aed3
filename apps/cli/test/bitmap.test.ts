/**
 * Persistent dirty bitmaps against qemu-img / qemu-io 7.2: the bits writes
 * set (twin images, one written by qemu-io, one by `qcow2 io`), `qcow2
 * bitmap` beside `qemu-img bitmap`, `convert --bitmaps`, in-use bitmaps
 * left by an unclean shutdown, and qemu-img reading what this toolkit wrote.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"
import { messages, storedBitmaps } from "./bitmaps.js"

let dir: string
const file = (name: string) => path.join(dir, name)

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-bitmap-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const img = (args: ReadonlyArray<string>, allowFail = false) => qemu(dir, "qemu-img", args, allowFail)
const io = (args: ReadonlyArray<string>, allowFail = false) => qemu(dir, "qemu-io", args, allowFail)
const ours = (args: ReadonlyArray<string>) => qcow2(dir, args)

/** `qemu-img check` finds nothing: no corruption, no leak. */
const expectClean = (name: string) => {
  const r = img(["check", name], true)
  expect(r.stdout + r.stderr).toContain("No errors were found on the image.")
  expect(r.status).toBe(0)
}

/** The bitmaps part of `qemu-img info` (names, flags, granularity). */
const infoBitmaps = (name: string): string => {
  const out = img(["info", "-U", name]).stdout
  const start = out.indexOf("    bitmaps:")
  return start < 0 ? "" : out.slice(start, out.indexOf("    refcount bits:"))
}

/** Two identical images with bitmaps (one enabled at each granularity, one disabled), made by qemu-img. */
const twins = (name: string, size = "16M", extra: ReadonlyArray<string> = []) => {
  img(["create", "-q", "-f", "qcow2", ...extra, file(`${name}-q.qcow2`), size])
  img(["bitmap", "--add", "-g", "512", file(`${name}-q.qcow2`), "fine"])
  img(["bitmap", "--add", "-g", "64k", file(`${name}-q.qcow2`), "coarse"])
  img(["bitmap", "--add", "-g", "2M", file(`${name}-q.qcow2`), "huge"])
  img(["bitmap", "--add", "--disable", file(`${name}-q.qcow2`), "off"])
  fs.copyFileSync(file(`${name}-q.qcow2`), file(`${name}-t.qcow2`))
  return { qemuFile: `${name}-q.qcow2`, ourFile: `${name}-t.qcow2` }
}

describe("writes set the bits qemu-io sets", () => {
  it("write, write -z, write -z -u, write -c, discard, across sessions", () => {
    const { qemuFile, ourFile } = twins("w")
    const sessions = [
      ["write -P 1 1000 5000", "write -z 3M 5k", "discard 1M 100k"],
      ["write -z -u 5M 64k", "write -c 6M 64k", "write 8388607 2", "write 16776704 512"],
      ["discard 0 16M"]
    ]
    for (const cmds of sessions.slice(0, 2)) {
      io(cmds.flatMap((c) => ["-c", c]).concat(["-f", "qcow2", qemuFile]))
      const r = ours(["io", ...cmds.flatMap((c) => ["-c", c]), "-f", "qcow2", ourFile])
      expect(r.status, r.stderr).toBe(0)
      expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
      expect(infoBitmaps(ourFile)).toBe(infoBitmaps(qemuFile))
      expectClean(ourFile)
    }
    const fine = storedBitmaps(file(ourFile)).find((b) => b.name === "fine")!
    expect(fine.dirty[0]).toEqual([512, 5632])
    expect(storedBitmaps(file(ourFile)).find((b) => b.name === "off")!.dirty).toEqual([])
    io(["-c", sessions[2]![0]!, "-f", "qcow2", qemuFile])
    ours(["io", "-c", sessions[2]![0]!, "-f", "qcow2", ourFile])
    expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
    expect(storedBitmaps(file(ourFile)).find((b) => b.name === "huge")!.dirty).toEqual([[0, 16 * 1024 * 1024]])
    expectClean(ourFile)
  })

  it("bits this toolkit stored are read and extended by qemu-io, and the reverse", () => {
    const { qemuFile, ourFile } = twins("x", "3G")
    const first = ["write 2G 4k", "write -z 2147479552 8k"]
    const second = ["write 100M 1M", "discard 2G 64k"]
    ours(["io", ...first.flatMap((c) => ["-c", c]), ourFile])
    io([...first.flatMap((c) => ["-c", c]), qemuFile])
    // Swap writers for the second session: each reads what the other stored.
    io([...second.flatMap((c) => ["-c", c]), ourFile])
    ours(["io", ...second.flatMap((c) => ["-c", c]), qemuFile])
    expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
    expect(storedBitmaps(file(ourFile)).find((b) => b.name === "coarse")!.dirty).toEqual([
      [100 * 1024 * 1024, 1024 * 1024],
      [2 ** 31 - 64 * 1024, 128 * 1024]
    ])
    expectClean(ourFile)
    expectClean(qemuFile)
  })

  it("read-only opens change nothing; a read-write open marks the bitmaps in use until close", () => {
    const { ourFile } = twins("r", "4M")
    const before = fs.readFileSync(file(ourFile))
    expect(ours(["info", ourFile]).status).toBe(0)
    expect(ours(["io", "-r", "-c", "read 0 4k", ourFile]).status).toBe(0)
    expect(ours(["convert", "-O", "raw", ourFile, file("r.raw")]).status).toBe(0)
    expect(fs.readFileSync(file(ourFile)).equals(before)).toBe(true)
    // While open read-write (here: between qemu-io's open and its info command) they are in use.
    const during = ours(["io", "-c", "write 0 4k", "-c", "info", ourFile])
    expect(during.stdout).toContain("[0]: in-use")
    expect(infoBitmaps(ourFile)).not.toContain("in-use")
  })
})

describe("bitmaps and the virtual size, and images written by programs without bitmap support", () => {
  it("truncate grows and shrinks the bitmaps as QEMU does; in-use bitmaps refuse it", () => {
    const { qemuFile, ourFile } = twins("t", "10M")
    const cmds = ["write 9M 1M", "truncate 20M", "write 15M 4k", "truncate 9500k", "truncate 12M", "write 11M 4k"].flatMap((c) => ["-c", c])
    io([...cmds, qemuFile])
    expect(ours(["io", ...cmds, ourFile]).status).toBe(0)
    expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
    expectClean(ourFile)
    for (const f of [qemuFile, ourFile]) io(["-c", "abort", f], true)
    const q = io(["-c", "truncate 30M", qemuFile], true)
    const t = ours(["io", "-c", "truncate 30M", ourFile])
    expect(messages(t.stderr)).toBe(messages(q.stderr))
    expect(img(["info", ourFile]).stdout).toContain("virtual size: 12 MiB")
  })

  it("a cleared autoclear bit voids the bitmaps: a writer drops the extension and leaks what QEMU leaks", () => {
    const { qemuFile, ourFile } = twins("a", "4M")
    for (const f of [qemuFile, ourFile]) {
      const fd = fs.openSync(file(f), "r+")
      fs.writeSync(fd, new Uint8Array(8), 0, 8, 88)
      fs.closeSync(fd)
    }
    io(["-c", "write 0 4k", qemuFile])
    expect(ours(["io", "-c", "write 0 4k", ourFile]).status).toBe(0)
    expect(storedBitmaps(file(ourFile))).toEqual([])
    const q = img(["check", "--output=json", qemuFile], true)
    const t = img(["check", "--output=json", ourFile], true)
    expect({ ...JSON.parse(t.stdout), filename: "" }).toEqual({ ...JSON.parse(q.stdout), filename: "" })
    expect(JSON.parse(t.stdout)["leaks"]).toBeGreaterThan(0)
    expect(ours(["check", "-r", "leaks", ourFile]).status).toBe(0)
    expectClean(ourFile)
  })
})

describe("damaged bitmap tables", () => {
  /** Sets a reserved bit in the first table entry of the first bitmap; `inUse` also sets its in_use flag. */
  const damage = (name: string, inUse: boolean) => {
    img(["create", "-q", "-f", "qcow2", file(name), "4M"])
    img(["bitmap", "--add", file(name), "b"])
    io(["-c", "write 0 64k", file(name)])
    const dirOffset = findDirectory(file(name))
    const fd = fs.openSync(file(name), "r+")
    const entry = Buffer.alloc(16)
    fs.readSync(fd, entry, 0, 16, dirOffset)
    const tableOffset = Number(entry.readBigUInt64BE(0))
    const tableEntry = Buffer.alloc(8)
    fs.readSync(fd, tableEntry, 0, 8, tableOffset)
    tableEntry[7]! |= 2
    fs.writeSync(fd, tableEntry, 0, 8, tableOffset)
    if (inUse) {
      entry.writeUInt32BE(entry.readUInt32BE(12) | 1, 12)
      fs.writeSync(fd, entry, 12, 4, dirOffset + 12)
    }
    fs.closeSync(fd)
  }

  const same = (args: ReadonlyArray<string>, name: string, tail: ReadonlyArray<string> = []) => {
    const q = img([...args, file(name), ...tail], true)
    const t = ours([...args, file(name), ...tail])
    expect(messages(t.stderr), args.join(" ")).toBe(messages(q.stderr))
    expect(t.status, args.join(" ")).toBe(q.status)
  }

  it("a bitmap in use is not loaded: info works, check fails as qemu-img's, remove leaves the leak qemu-img leaves", () => {
    damage("dmg-q.qcow2", true)
    fs.copyFileSync(file("dmg-q.qcow2"), file("dmg-t.qcow2"))
    same(["check"], "dmg-t.qcow2")
    same(["check", "-r", "all"], "dmg-t.qcow2")
    expect(ours(["info", file("dmg-t.qcow2")]).stdout).toContain("[0]: in-use")
    img(["bitmap", "--remove", file("dmg-q.qcow2"), "b"])
    expect(ours(["bitmap", "--remove", file("dmg-t.qcow2"), "b"]).status).toBe(0)
    const leaks = (f: string) => JSON.parse(img(["check", "--output=json", file(f)], true).stdout)["leaks"]
    expect(leaks("dmg-t.qcow2")).toBe(leaks("dmg-q.qcow2"))
  })

  it("a bitmap not in use with a bad table refuses every open, with qemu-img's message", () => {
    damage("dmg2.qcow2", false)
    same(["info"], "dmg2.qcow2")
    same(["check"], "dmg2.qcow2")
    same(["bitmap", "--remove"], "dmg2.qcow2", ["b"])
  })
})

/** Offset of the bitmap directory, from the header extension (type 0x23852875). */
const findDirectory = (f: string): number => {
  const b = fs.readFileSync(f)
  let off = b.readUInt32BE(100)
  for (;;) {
    const type = b.readUInt32BE(off)
    const len = b.readUInt32BE(off + 4)
    if (type === 0x23852875) return Number(b.readBigUInt64BE(off + 24))
    if (type === 0) throw new Error("no bitmaps extension")
    off += 8 + Math.ceil(len / 8) * 8
  }
}

describe("qcow2 bitmap against qemu-img bitmap", () => {
  /** Runs the same bitmap command on both twins: same exit code, same messages, same output. */
  const both = (qemuFile: string, ourFile: string, options: ReadonlyArray<string>, name: string) => {
    const q = img(["bitmap", ...options, qemuFile, name], true)
    const t = ours(["bitmap", ...options, ourFile, name])
    const label = `bitmap ${options.join(" ")} ${name}`
    expect(messages(t.stderr).replace(/#block\d+/g, "#block"), label).toBe(messages(q.stderr).replace(/#block\d+/g, "#block"))
    expect(t.status, label).toBe(q.status)
    expect(t.stdout, label).toBe(q.stdout)
  }

  it("add, disable, enable, clear, remove, merge (also from another image) give the same bitmaps and bits", () => {
    const { qemuFile, ourFile } = twins("b", "10M")
    img(["create", "-q", "-f", "qcow2", file("src.qcow2"), "10M"])
    img(["bitmap", "--add", "-g", "4k", file("src.qcow2"), "s"])
    io(["-c", "write 7M 12k", file("src.qcow2")])
    io(["-c", "write 1M 3k", qemuFile])
    ours(["io", "-c", "write 1M 3k", ourFile])
    const steps: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["--add", "-g", "128k", "--disable"], "b0"],
      [["--merge", "fine"], "b0"],
      [["--clear"], "fine"],
      [["--remove"], "coarse"],
      [["--remove", "--add"], "huge"],
      [["--enable", "-f", "qcow2"], "b0"],
      [["--add", "--merge", "s", "-b", file("src.qcow2"), "-F", "qcow2"], "m"],
      [["--merge", "m", "--merge", "b0", "--disable"], "fine"]
    ]
    for (const [options, name] of steps) both(qemuFile, ourFile, options, name)
    expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
    expect(infoBitmaps(ourFile)).toBe(infoBitmaps(qemuFile))
    const fine = storedBitmaps(file(ourFile)).find((b) => b.name === "fine")!
    expect(fine.dirty).toEqual([[1024 * 1024, 128 * 1024], [7 * 1024 * 1024, 64 * 1024]])
    expectClean(ourFile)
  })

  it("refusals: same messages and exit codes, and what came before a failure is kept", () => {
    const { qemuFile, ourFile } = twins("e", "10M")
    img(["create", "-q", "-f", "qcow2", file("other.qcow2"), "20M"])
    img(["bitmap", "--add", file("other.qcow2"), "big"])
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["--add"], "fine"],
      [["--remove"], "nope"],
      [["--add", "-g", "100"], "x"],
      [["--add", "-g", "4G"], "x"],
      [["--add", "-g", "abc"], "x"],
      [["--clear", "-g", "1k"], "fine"],
      [["-f", "qcow2"], "fine"],
      [["--add"], ""],
      [["--merge", "nope"], "fine"],
      [["--merge", "fine"], "nope"],
      [["--merge", "big", "-b", file("other.qcow2")], "fine"],
      [["--merge", "fine", "-F", "qcow2"], "coarse"],
      [["--add", "-b", file("other.qcow2")], "y"],
      [["--add", "--enable", "--merge", "nope"], "z"]
    ]
    for (const [options, name] of cases) both(qemuFile, ourFile, options, name)
    const missing = ours(["bitmap", "--add", ourFile])
    expect([missing.status, messages(missing.stderr)]).toEqual([1, "Expecting filename and bitmap name\n"])
    expect(infoBitmaps(ourFile)).toBe(infoBitmaps(qemuFile))
    expect(infoBitmaps(ourFile)).toContain("name: z")
    img(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", file("v2.qcow2"), "1M"])
    const v2 = ours(["bitmap", "--add", file("v2.qcow2"), "x"])
    expect([v2.status, messages(v2.stderr).replace(/#block\d+/, "#block")]).toEqual([
      1,
      "Operation add on bitmap x failed: Can't make bitmap 'x' persistent in '#block': Cannot store dirty bitmaps in qcow2 v2 files\n"
    ])
    expectClean(ourFile)
  })
})

describe("convert --bitmaps", () => {
  it("copies the bitmaps as qemu-img does; qemu-img reads and re-copies them bit for bit", () => {
    const { qemuFile, ourFile } = twins("c", "10M")
    for (const f of [qemuFile, ourFile]) io(["-c", "write 2M 1M", "-c", "write 9M 4k", f])
    expect(ours(["convert", "--bitmaps", "-O", "qcow2", ourFile, file("c-ours.qcow2")]).status).toBe(0)
    img(["convert", "--bitmaps", "-O", "qcow2", qemuFile, file("c-qemu.qcow2")])
    expect(storedBitmaps(file("c-ours.qcow2"))).toEqual(storedBitmaps(file("c-qemu.qcow2")))
    expect(infoBitmaps("c-ours.qcow2")).toBe(infoBitmaps("c-qemu.qcow2"))
    expectClean("c-ours.qcow2")
    // QEMU loads what this toolkit stored and copies it again, unchanged.
    img(["convert", "--bitmaps", "-O", "qcow2", file("c-ours.qcow2"), file("c-again.qcow2")])
    expect(storedBitmaps(file("c-again.qcow2"))).toEqual(storedBitmaps(file("c-qemu.qcow2")))
    // And qemu-img merges one of them into a bitmap of a fresh image.
    img(["create", "-q", "-f", "qcow2", file("fresh.qcow2"), "10M"])
    img(["bitmap", "--add", "-g", "1M", "--merge", "fine", "-b", file("c-ours.qcow2"), file("fresh.qcow2"), "copy"])
    expect(storedBitmaps(file("fresh.qcow2"))[0]!.dirty).toEqual([[2 * 1024 * 1024, 1024 * 1024], [9 * 1024 * 1024, 1024 * 1024]])
  })

  it("refuses what qemu-img refuses, with its messages", () => {
    const { ourFile } = twins("d", "1M")
    img(["create", "-q", "-f", "raw", file("d.raw"), "1M"])
    img(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", file("d-v2.qcow2"), "1M"])
    const cases: ReadonlyArray<ReadonlyArray<string>> = [
      ["convert", "--bitmaps", "-O", "raw", ourFile, "d-out.raw"],
      ["convert", "--bitmaps", "-O", "qcow2", "-o", "compat=0.10", ourFile, "d-out.qcow2"],
      ["convert", "--bitmaps", "-O", "qcow2", "d.raw", "d-out2.qcow2"],
      ["convert", "--bitmaps", "-O", "qcow2", "d-v2.qcow2", "d-out3.qcow2"],
      ["convert", "--bitmaps", "-O", "qcow2", ourFile, ourFile, "d-out4.qcow2"],
      ["convert", "--skip-broken-bitmaps", "-O", "qcow2", ourFile, "d-out5.qcow2"]
    ]
    for (const c of cases) {
      const q = img(c, true)
      const t = ours(c)
      expect(messages(t.stderr), c.join(" ")).toBe(messages(q.stderr))
      expect(t.status, c.join(" ")).toBe(q.status)
    }
  })
})

describe("bitmaps left in use by an unclean shutdown", () => {
  it("are shown in use, kept as they are, refused by convert unless skipped, removable, and counted by check", () => {
    const { qemuFile, ourFile } = twins("u", "10M")
    for (const f of [qemuFile, ourFile]) {
      io(["-c", "write 0 1M", f])
      io(["-c", "abort", f], true)
      // A bitmap added after the crash is consistent.
      img(["bitmap", "--add", f, "late"])
    }
    const ourInfo = ours(["info", ourFile])
    expect(ourInfo.stdout).toBe(img(["info", ourFile]).stdout.replace(/^disk size: .*\n/m, ourInfo.stdout.match(/^disk size: .*\n/m)![0]))
    expect(ourInfo.stdout).toContain("[0]: in-use")
    // Writes leave in-use bitmaps alone and track the consistent one.
    const before = storedBitmaps(file(ourFile)).filter((b) => b.name !== "late")
    ours(["io", "-c", "write 5M 4k", ourFile])
    io(["-c", "write 5M 4k", qemuFile])
    expect(storedBitmaps(file(ourFile)).filter((b) => b.name !== "late")).toEqual(before)
    expect(storedBitmaps(file(ourFile))).toEqual(storedBitmaps(file(qemuFile)))
    // check: nothing to report, nothing leaked; check -r changes nothing.
    const copy = fs.readFileSync(file(ourFile))
    const checked = ours(["check", "-r", "all", ourFile])
    expect(checked.stdout).toBe(img(["check", qemuFile]).stdout)
    expect(fs.readFileSync(file(ourFile)).equals(copy)).toBe(true)
    // convert refuses, or skips with warnings.
    for (const extra of [[], ["--skip-broken-bitmaps"]]) {
      const args = ["convert", "--bitmaps", ...extra, "-O", "qcow2"]
      const q = img([...args, qemuFile, file("u-copy-q.qcow2")], true)
      const t = ours([...args, ourFile, file("u-copy-t.qcow2")])
      expect(messages(t.stderr)).toBe(messages(q.stderr))
      expect(t.status).toBe(q.status)
    }
    expect(infoBitmaps("u-copy-t.qcow2")).toBe(infoBitmaps("u-copy-q.qcow2"))
    // clear/enable refuse an inconsistent bitmap; remove takes it away and frees its clusters.
    for (const action of ["--clear", "--enable", "--disable"]) {
      const t = ours(["bitmap", action, ourFile, "fine"])
      const q = img(["bitmap", action, qemuFile, "fine"], true)
      expect([t.status, messages(t.stderr)]).toEqual([q.status, messages(q.stderr)])
    }
    expect(ours(["bitmap", "--remove", ourFile, "fine"]).status).toBe(0)
    img(["bitmap", "--remove", qemuFile, "fine"])
    expect(infoBitmaps(ourFile)).toBe(infoBitmaps(qemuFile))
    expectClean(ourFile)
  })
})
