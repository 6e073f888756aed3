/**
 * stdout and stderr on one pipe come out in qemu-img's order: stderr is
 * written at once and whole (C stdio's unbuffered stderr), stdout in
 * 4 KiB blocks and at exit. A stderr message longer than the pipe holds
 * must still end before the stdout written after it (iotest 272: 2,000
 * "Leaked cluster" lines, then check's summary on stdout).
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { BUNDLE, makeTempDir, qemu } from "./helpers.js"

const dir = makeTempDir("qcow2-output-order-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/**
 * A slow reader: it waits, then takes the pipe 4 KiB at a time with a
 * pause after each read, so a writer meets a full pipe again and again
 * (where Node's streams would queue what the pipe does not take).
 */
const SLOW_READER = `
const fs = require("node:fs")
const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
pause(200)
const chunk = Buffer.alloc(4096)
const parts = []
for (let n; (n = fs.readSync(0, chunk, 0, chunk.length, null)) > 0; pause(2)) parts.push(Buffer.from(chunk.subarray(0, n)))
fs.writeSync(1, Buffer.concat(parts))
`

/** Runs `command` with its stdout and stderr on the same pipe, read by the slow reader. */
const combined = (command: ReadonlyArray<string>): string =>
  spawnSync("sh", ["-c", '"$@" 2>&1 | "$NODE" -e "$SLOW_READER"', "sh", ...command], {
    cwd: dir,
    encoding: "utf8",
    env: { ...process.env, NODE: process.execPath, SLOW_READER },
    maxBuffer: 64 << 20
  }).stdout

/** An image whose first refcount block says 2048 clusters are in use, most of them referenced by nothing (as iotest 272 makes it). */
const leakyImage = (name: string): void => {
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=2M,refcount_bits=2", name, "64M"])
  const file = path.join(dir, name)
  const fd = fs.openSync(file, "r+")
  try {
    const word = Buffer.alloc(8)
    fs.readSync(fd, word, 0, 8, 48)
    fs.readSync(fd, word, 0, 8, Number(word.readBigUInt64BE()))
    fs.writeSync(fd, Buffer.alloc(512, 0x55), 0, 512, Number(word.readBigUInt64BE()))
  } finally {
    fs.closeSync(fd)
  }
  fs.truncateSync(file, 4 * 2 ** 30)
}

describe("stderr and stdout on one pipe (iotest 272)", () => {
  it("check's 2,000+ leak lines on stderr all end before its summary on stdout, as qemu-img's", () => {
    leakyImage("leaky.qcow2")
    const expected = combined(["qemu-img", "check", "leaky.qcow2"])
    const actual = combined([process.execPath, BUNDLE, "check", "leaky.qcow2"])
    expect(expected.split("\n").filter((line) => line.startsWith("Leaked cluster ")).length).toBeGreaterThan(2000)
    expect(expected.length).toBeGreaterThan(64 << 10)
    expect(actual).toBe(expected)
  })
})
