/**
 * qemu-io's requests in flight and blkdebug's breakpoints, against real
 * qemu-io 7.2: the same command scripts (iotest 046's concurrent
 * allocations, 271's subcluster allocations, the breakpoint commands and
 * their errors, where completions are printed) run through qemu-io and
 * through this CLI as `qemu-io` on copies of one image must print the same
 * bytes (timings masked) and exit alike, and leave images that qemu-img
 * finds identical and clean.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, qemu } from "./helpers.js"

const QEMU_IO_BIN = path.join(path.dirname(BUNDLE), "qemu-io.cjs")

let dir = ""

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-qemu-io-aio-")
  // 046's backing file, scaled down: cluster N holds pattern N.
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "2M"])
  qemu(dir, "qemu-io", Array.from({ length: 18 }, (_, n) => ["-c", `write -P ${n} ${n * 64}k 64k`]).flat().concat("base.qcow2"))
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "overlay.qcow2", "6G"])
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "extended_l2=on", "subclusters.qcow2", "1M"])
}, 120_000)

afterAll(() => {
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

interface Result {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

const run = (command: string, args: ReadonlyArray<string>, input?: string): Result => {
  const r = spawnSync(command, args, { cwd: dir, encoding: "utf8", input: input ?? "", timeout: 60_000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

const maskTimes = (s: string): string => s.replace(/ops; [\d:.]+ (?:sec )?\([^)]*\)/g, "ops; T")

const isReport = (line: string | undefined): boolean => line !== undefined && /^(?:wrote|read) \d+\/\d+ bytes at offset \d+$/.test(line)

/**
 * The requests that waited for a held one complete after it in an order
 * that qemu-io leaves to its thread pool (iotest 271 masks their offsets):
 * their reports are sorted. The resumed request's own report comes first
 * in both programs (its flush goes first) and stays where it is.
 */
const sortWaiters = (out: string): string => {
  const lines = out.split("\n")
  const result: string[] = []
  for (let i = 0; i < lines.length; ) {
    const line = lines[i++]!
    result.push(line)
    if (!line.startsWith("blkdebug: Resuming")) continue
    if (isReport(lines[i])) result.push(lines[i++]!, lines[i++]!)
    const waiters: string[] = []
    while (isReport(lines[i])) waiters.push(`${lines[i++]}\n${lines[i++]}`)
    result.push(...waiters.sort())
  }
  return result.join("\n")
}

/**
 * Runs `commands` (-c each; IMG: the image's copy) through qemu-io on one
 * copy of `image` and through ours on another; both results (times masked)
 * and both copies' names.
 */
const both = (image: string, commands: ReadonlyArray<string>, prefix = "") => {
  const go = (who: string, program: ReadonlyArray<string>) => {
    const copy = `${who}-${Math.random().toString(36).slice(2)}-${image}`
    fs.copyFileSync(path.join(dir, image), path.join(dir, copy))
    const r = run(program[0]!, [...program.slice(1), ...commands.flatMap((c) => ["-c", c.replaceAll("IMG", copy)]), `${prefix}${copy}`])
    return { copy, result: { status: r.status, stdout: sortWaiters(maskTimes(r.stdout)), stderr: r.stderr.replaceAll(copy, "IMG") } }
  }
  return { real: go("real", ["qemu-io"]), ours: go("ours", [process.execPath, QEMU_IO_BIN]) }
}

/** Same output as qemu-io; the image ours left equals qemu-io's and passes qemu-img check. */
const expectSameRun = (image: string, commands: ReadonlyArray<string>, prefix = "blkdebug::"): void => {
  const { real, ours } = both(image, commands, prefix)
  expect(ours.result).toEqual(real.result)
  expect(run("qemu-img", ["compare", real.copy, ours.copy]).stdout).toBe("Images are identical.\n")
  expect(run("qemu-img", ["check", ours.copy]).stdout).toMatch(/^No errors were found on the image\.\n/)
}

/** One of iotest 046's cases: a write held at write_aio while the next ones touch its cluster. */
const heldWrite = (first: string, then: ReadonlyArray<string>): string[] => ["break write_aio A", `aio_write ${first}`, "wait_break A", ...then.map((w) => `aio_write ${w}`), "resume A", "aio_flush"]

describe("iotest 046: concurrent requests touching the same cluster", () => {
  const cases: Record<string, ReadonlyArray<string>> = {
    "writes before and after the held one in its cluster": heldWrite("-P 10 0x18000 0x2000", ["-P 11 0x12000 0x2000", "-P 12 0x1c000 0x2000"]),
    "a sequential write into the next cluster": heldWrite("-P 20 0x28000 0x2000", ["-P 21 0x2a000 0x10000"]),
    "the same with a gap": heldWrite("-P 40 0x48000 0x2000", ["-P 41 0x4c000 0x10000"]),
    "the next cluster already allocated": ["write -P 70 0x76000 0x8000", "aio_flush", ...heldWrite("-P 60 0x66000 0x2000", ["-P 61 0x6a000 0xe000"])],
    "the next cluster compressed": [
      "write -P 109 0xa0000 0x1000",
      "write -c -P 110 0xb0000 0x10000",
      "aio_flush",
      "discard 0xa0000 0x10000",
      "aio_flush",
      ...heldWrite("-P 100 0xa6000 0x2000", ["-P 101 0xaa000 0xe000"])
    ],
    "a reverse sequential write": heldWrite("-P 121 0xdc000 0x2000", ["-P 120 0xc4000 0x18000"]),
    "a larger write over the held one": heldWrite("-P 161 0x10c000 0x8000", ["-P 160 0x104000 0x18000"])
  }
  for (const [name, commands] of Object.entries(cases)) it(name, () => expectSameRun("overlay.qcow2", commands))

  it("the whole 046 sequence on standard input reads back as 046 verifies", () => {
    const script = Object.values(cases).flat().join("\n") + "\n"
    const copy = "ours-stdin-overlay.qcow2"
    fs.copyFileSync(path.join(dir, "overlay.qcow2"), path.join(dir, copy))
    const ours = run(process.execPath, [QEMU_IO_BIN, `blkdebug::${copy}`], script)
    const realCopy = "real-stdin-overlay.qcow2"
    fs.copyFileSync(path.join(dir, "overlay.qcow2"), path.join(dir, realCopy))
    const real = run("qemu-io", [`blkdebug::${realCopy}`], script)
    // The prompts come where each program is when a request suspends; 046 filters them out.
    const unprompted = (s: string) => sortWaiters(maskTimes(s).replaceAll("qemu-io> ", ""))
    expect(unprompted(ours.stdout)).toBe(unprompted(real.stdout))
    const verify = ["read -P 11 0x12000 0x2000", "read -P 10 0x18000 0x2000", "read -P 12 0x1c000 0x2000", "read -P 1 0x1e000 0x2000", "read -P 21 0x2a000 0x10000", "read -P 3 0x3a000 0x6000"]
    const read = run("qemu-io", [...verify.flatMap((c) => ["-c", c]), copy])
    expect(read.stdout).not.toMatch(/Pattern verification failed/)
    expect(run("qemu-img", ["compare", realCopy, copy]).stdout).toBe("Images are identical.\n")
  })
})

describe("iotest 271: concurrent subcluster allocations", () => {
  it("three writes into one cluster's subclusters wait for the held allocation", () =>
    expectSameRun("subclusters.qcow2", heldWrite("-P 10 30k 2k", ["-P 11 20k 2k", "-P 12 40k 2k"])))
})

describe("breakpoint commands", () => {
  it("errors, remove_break resuming, two rules on one event, events off the data path", () =>
    expectSameRun("subclusters.qcow2", [
      "break nosuch B",
      "resume Z",
      "remove_break Z",
      "break write_aio C",
      "remove_break C",
      "break write_aio A",
      "aio_write 0 4k",
      "wait_break A",
      "remove_break A",
      "aio_flush",
      "break write_aio D",
      "break write_aio D",
      "aio_write 64k 4k",
      "wait_break D",
      "resume D",
      "resume D",
      "aio_flush",
      "break cluster_alloc E",
      "aio_write 128k 4k",
      "wait_break E",
      "resume E",
      "aio_flush",
      "break read_aio F",
      "aio_read -P 0xcd 0 4k",
      "wait_break F",
      "resume F",
      "aio_flush"
    ]))

  it("without a blkdebug node: Operation not supported", () =>
    expectSameRun("subclusters.qcow2", ["break write_aio A", "resume A", "remove_break A"], ""))
})

describe("where completions are printed", () => {
  it("after the synchronous commands that follow, at exit (qemu-io's main loop runs only while waiting)", () =>
    expectSameRun("subclusters.qcow2", ["aio_write -P 1 0 4k", "read 64k 4k", "length", "info"], ""))
  it("at aio_flush, and a failed request's error with it", () =>
    expectSameRun("subclusters.qcow2", ["aio_write -P 1 0 4k", "length", "aio_flush", "aio_read 2M 512", "length", "aio_flush", "aio_read -P 1 0 4k", "aio_flush", "aio_read -P 2 0 4k", "aio_flush"], ""))
  it("at close, before what close prints", () => expectSameRun("subclusters.qcow2", ["aio_write -P 3 0 64k", "close", "length"], ""))
})
