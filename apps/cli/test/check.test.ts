/**
 * `qcow2 check` on damaged images against `qemu-img check` (QEMU 7.2): the
 * same stdout, the same findings on stderr, the same exit status. Damaged
 * images that a normal open refuses (tables past the end of the file) are
 * still checked, as qemu-img's open in check mode allows; other commands
 * keep refusing them.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

buildBundle()
const dir = makeTempDir("qcow2-check-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** A fresh directory for one test. */
const sub = (name: string): string => fs.mkdtempSync(path.join(dir, `${name}-`))

/** stderr lines without the program name prefix. */
const findings = (stderr: string, program: string): string => stderr.replace(new RegExp(`^${program}: `, "gm"), "")

/** Runs the same check on two copies of `file` and expects the same output and status. */
const sameAsQemu = (d: string, file: string, args: ReadonlyArray<string>): void => {
  fs.copyFileSync(path.join(d, file), path.join(d, "theirs.qcow2"))
  fs.copyFileSync(path.join(d, file), path.join(d, "ours.qcow2"))
  const expected = qemu(d, "qemu-img", [...args, "theirs.qcow2"], true)
  const r = qcow2(d, [...args, "ours.qcow2"])
  expect({ args, out: r.stdout.replace(/ours\.qcow2/g, "theirs.qcow2"), err: findings(r.stderr, "qcow2"), status: r.status }).toEqual({
    args,
    out: expected.stdout,
    err: findings(expected.stderr, "qemu-img"),
    status: expected.status
  })
}

/** An image with 1 MiB of data in its first L2 table (64 KiB clusters: reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000). */
const made = (d: string): string => {
  qemu(d, "qemu-img", ["create", "-q", "-f", "qcow2", "a.qcow2", "4M"])
  qemu(d, "qemu-io", ["-c", "write -P 1 0 1M", "a.qcow2"])
  return path.join(d, "a.qcow2")
}

describe("check of images a normal open refuses", () => {
  it("a file cut short before its L1 table: check and check -r leaks report like qemu-img, other commands refuse", () => {
    const d = sub("truncated")
    fs.truncateSync(made(d), 65536)
    for (const args of [["check"], ["check", "--output=json"], ["check", "-r", "leaks"]]) sameAsQemu(d, "a.qcow2", args)
    const info = qcow2(d, ["info", "a.qcow2"])
    expect(info.status).toBe(1)
    expect(info.stderr).toMatch(/lies past the end of the file/)
  })

  it("check -r all of a file cut short leaves no more corruptions than qemu-img's repair", () => {
    const d = sub("truncated-all")
    fs.truncateSync(made(d), 65536)
    fs.copyFileSync(path.join(d, "a.qcow2"), path.join(d, "b.qcow2"))
    qemu(d, "qemu-img", ["check", "-r", "all", "a.qcow2"], true)
    const r = qcow2(d, ["check", "-r", "all", "b.qcow2"])
    expect(r.status).not.toBe(1)
    const corruptions = (f: string) => JSON.parse(qemu(d, "qemu-img", ["check", "--output=json", f], true).stdout)["corruptions"] ?? 0
    expect(corruptions("b.qcow2")).toBeLessThanOrEqual(corruptions("a.qcow2"))
  })
})

describe("check -r leaks of a corrupt image", () => {
  it("prints the findings before 'Check failed', like qemu-img", () => {
    const d = sub("corrupt-leaks")
    const file = made(d)
    const bytes = fs.readFileSync(file)
    bytes.writeUInt16BE(0, 0x20000 + 2 * 5) // refcount of data cluster 5 zeroed: needs a rebuild
    fs.writeFileSync(file, bytes)
    for (const args of [["check", "-r", "leaks"], ["check", "-r", "leaks", "--output=json"], ["check", "-r", "all"]]) sameAsQemu(d, "a.qcow2", args)
  })
})

describe("check of an image the driver cannot decode", () => {
  it("a refcount table entry past 2^53: check and repairs report like qemu-img", () => {
    const d = sub("reftable-huge")
    const file = made(d)
    const bytes = fs.readFileSync(file)
    bytes.writeBigUInt64BE(1n << 60n, 0x10000 + 8)
    fs.writeFileSync(file, bytes)
    for (const args of [["check"], ["check", "-r", "leaks"], ["check", "-r", "all"]]) sameAsQemu(d, "a.qcow2", args)
  })
})
