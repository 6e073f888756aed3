/**
 * Hostile images: headers patched the way iotests 080 and fuzzers do. The
 * CLI must answer with a one-line "qcow2: …" message and exit status 1,
 * promptly, never with a stack trace.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2 } from "./helpers.js"

interface Hostile {
  readonly name: string
  readonly file: string
  /** Subcommand and arguments before the file name. */
  readonly command: ReadonlyArray<string>
  /** Patches the bytes of a fresh 1 MiB image with 128 KiB of data (64 KiB clusters). */
  readonly patch?: (b: Buffer) => void
  /** Builds the files itself instead. */
  readonly make?: (dir: string) => void
  readonly message: RegExp
}

const CASES: ReadonlyArray<Hostile> = [
  { name: "huge l1_size", file: "l1huge.qcow2", command: ["info"], patch: (b) => b.writeUInt32BE(0x7fffffff, 36), message: /l1_size|L1/i },
  { name: "L1 table past the end of the file", file: "l1eof.qcow2", command: ["convert", "-O", "raw"], patch: (b) => b.writeBigUInt64BE(1n << 40n, 40), message: /L1|end of the file/i },
  { name: "refcount table past the end of the file", file: "rteof.qcow2", command: ["info"], patch: (b) => b.writeBigUInt64BE(1n << 40n, 48), message: /refcount|end of the file/i },
  {
    name: "header extension longer than the cluster",
    file: "extlen.qcow2",
    command: ["info"],
    patch: (b) => {
      b.writeUInt32BE(0xe2792aca, 112)
      b.writeUInt32BE(0xfffffff0, 116)
    },
    message: /extension/i
  },
  {
    name: "backing file name outside cluster 0",
    file: "backname.qcow2",
    command: ["info"],
    patch: (b) => {
      b.writeBigUInt64BE(65530n, 8)
      b.writeUInt32BE(100, 16)
    },
    message: /backing/i
  },
  { name: "unaligned L1 table offset", file: "l1unal.qcow2", command: ["map"], patch: (b) => b.writeBigUInt64BE(0x30001n, 40), message: /align|L1/i },
  { name: "unaligned refcount table offset", file: "rtunal.qcow2", command: ["info"], patch: (b) => b.writeBigUInt64BE(0x10200n, 48), message: /Reference count table offset invalid/ },
  { name: "unaligned L2 table offset", file: "l2unal.qcow2", command: ["convert", "-O", "raw"], patch: (b) => b.writeBigUInt64BE(0x8000000000040200n, 0x30000), message: /align|L2/i },
  { name: "huge refcount_table_clusters", file: "rtclusters.qcow2", command: ["info"], patch: (b) => b.writeUInt32BE(0xffffff, 56), message: /Reference count table too large/ },
  {
    name: "huge nb_snapshots",
    file: "nbsnap.qcow2",
    command: ["info"],
    patch: (b) => {
      b.writeUInt32BE(0xffffff, 60)
      b.writeBigUInt64BE(0x60000n, 64)
    },
    message: /snapshot/i
  },
  { name: "cluster_bits 40", file: "clbits.qcow2", command: ["info"], patch: (b) => b.writeUInt32BE(40, 20), message: /cluster/i },
  { name: "virtual size 2^62", file: "size.qcow2", command: ["info"], patch: (b) => b.writeBigUInt64BE(1n << 62n, 24), message: /size|big/i },
  { name: "unknown incompatible feature", file: "incompat.qcow2", command: ["info"], patch: (b) => b.writeBigUInt64BE(1n << 40n, 72), message: /feature/i },
  {
    name: "backing loop a -> b -> a",
    file: "loopa.qcow2",
    command: ["map", "--output=json"],
    make: (dir) => {
      execFileSync("qemu-img", ["create", "-f", "qcow2", "-u", "-b", "loopb.qcow2", "-F", "qcow2", "loopa.qcow2", "1M"], { cwd: dir })
      execFileSync("qemu-img", ["create", "-f", "qcow2", "-u", "-b", "loopa.qcow2", "-F", "qcow2", "loopb.qcow2", "1M"], { cwd: dir })
    },
    message: /loop/i
  },
  {
    name: "not an image at all, forced to qcow2",
    file: "junk.bin",
    command: ["info", "-f", "qcow2"],
    make: (dir) => fs.writeFileSync(path.join(dir, "junk.bin"), "hello\n"),
    message: /qcow2/i
  },
  { name: "a missing file", file: "missing.qcow2", command: ["info"], make: () => undefined, message: /missing\.qcow2/ }
]

let dir = ""
let baselineMs = 0

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-hostile-")
  for (const c of CASES) {
    if (c.make !== undefined) {
      c.make(dir)
      continue
    }
    const file = path.join(dir, c.file)
    execFileSync("qemu-img", ["create", "-f", "qcow2", file, "1M"])
    execFileSync("qemu-io", ["-c", "write -P 1 0 128k", file])
    const bytes = fs.readFileSync(file)
    c.patch!(bytes)
    fs.writeFileSync(file, bytes)
  }
  // Process start-up on this (shared, busy) machine, measured the same way.
  baselineMs = Math.min(...[0, 1, 2].map(() => qcow2(dir, ["--version"]).ms))
}, 120_000)

afterAll(() => {
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

describe.each(CASES)("$name", (c) => {
  it("fails with a one-line message, exit 1, promptly, no stack trace", () => {
    const extra = c.command[0] === "convert" ? ["out.raw"] : []
    const r = qcow2(dir, [...c.command, c.file, ...extra], 30_000)
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/^qcow2: /)
    expect(r.stderr).toMatch(c.message)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    expect(r.stderr.trim().split("\n").length).toBeLessThanOrEqual(2)
    expect(r.ms - baselineMs).toBeLessThan(2000)
  })
})
