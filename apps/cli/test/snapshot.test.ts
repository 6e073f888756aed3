/**
 * `qcow2 snapshot` and `convert -l` against qemu-img 7.2: the same command
 * lines on two copies of an image give the same output, exit status and
 * resulting image (layout included), each side's image readable by the other.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

let dir: string
beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-snapshot-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Messages with the program name and the snapshot dates masked. */
const normalize = (text: string): string =>
  text
    .replaceAll(/^(qcow2|qemu-img): /gm, "PROG: ")
    .replaceAll(/Try '(qcow2|qemu-img) --help'/g, "Try 'PROG --help'")
    .replaceAll(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, "DATE")

/** Runs the same snapshot command line through qemu-img on `ref` and through qcow2 on `ours`. */
const both = (args: (file: string) => string[], ref: string, ours: string) => {
  const expected = qemu(dir, "qemu-img", args(ref), true)
  const actual = qcow2(dir, args(ours))
  return { expected, actual }
}

const sameOutcome = (args: (file: string) => string[], ref: string, ours: string) => {
  const { expected, actual } = both(args, ref, ours)
  const label = args("FILE").join(" ")
  expect({ label, status: actual.status, stdout: normalize(actual.stdout), stderr: normalize(actual.stderr) }).toEqual({
    label,
    status: expected.status,
    stdout: normalize(expected.stdout).replaceAll(path.basename(ref), path.basename(ours)),
    stderr: normalize(expected.stderr).replaceAll(path.basename(ref), path.basename(ours))
  })
}

/** Two copies of one image with data, compressed and zero clusters, made by qemu-io. */
const twins = (name: string): { ref: string; ours: string } => {
  const ref = path.join(dir, `${name}-ref.qcow2`)
  const ours = path.join(dir, `${name}-ours.qcow2`)
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", ref, "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x11 0 640k", "-c", "write -c -P 0x22 1M 128k", "-c", "write -z 3M 64k", ref])
  fs.copyFileSync(ref, ours)
  return { ref, ours }
}

const check = (file: string) => qemu(dir, "qemu-img", ["check", file], true)
const mapJson = (file: string) => qemu(dir, "qemu-img", ["map", "--output=json", file]).stdout

describe("qcow2 snapshot", () => {
  it("creates, lists, applies and deletes as qemu-img does, leaving the same image", () => {
    const { ref, ours } = twins("seq")
    const steps: Array<(f: string) => string[]> = [
      (f) => ["snapshot", "-c", "s1", f],
      (f) => ["snapshot", "-l", f],
      (f) => ["snapshot", "-c", "s2", f],
      (f) => ["snapshot", "-c", "s1", f],
      (f) => ["snapshot", "-l", f],
      (f) => ["snapshot", "-a", "s2", f],
      (f) => ["snapshot", "-a", "1", f],
      (f) => ["snapshot", "-a", "nope", f],
      (f) => ["snapshot", "-d", "3", f],
      (f) => ["snapshot", "-d", "s1", f],
      (f) => ["snapshot", "-l", "-c", "x", f],
      (f) => ["snapshot", f],
      (f) => ["snapshot", "-q", "-c", "s3", f],
      (f) => ["snapshot", "-l", f]
    ]
    for (const step of steps) {
      sameOutcome(step, ref, ours)
      // Writes between the steps, so that applies and deletes have copies to undo.
      for (const f of [ref, ours]) qemu(dir, "qemu-io", ["-c", "write -P 0x33 512k 256k", f])
    }
    expect(check(ours)).toMatchObject({ status: 0 })
    expect(check(ours).stdout).toBe(check(ref).stdout)
    expect(mapJson(ours)).toBe(mapJson(ref))
    expect(qemu(dir, "qemu-img", ["compare", ref, ours]).stdout).toBe("Images are identical.\n")
  })

  it("deleting every snapshot leaves a check-clean image without leaks", () => {
    const { ours } = twins("last")
    expect(qcow2(dir, ["snapshot", "-c", "a", ours]).status).toBe(0)
    qemu(dir, "qemu-io", ["-c", "write -P 0x44 0 2M", ours])
    expect(qcow2(dir, ["snapshot", "-c", "b", ours]).status).toBe(0)
    expect(qcow2(dir, ["snapshot", "-d", "a", ours]).status).toBe(0)
    expect(qcow2(dir, ["snapshot", "-d", "b", ours]).status).toBe(0)
    const result = check(ours)
    expect(result.status).toBe(0)
    expect(result.stdout).toMatch(/^No errors were found on the image\./)
    expect(qcow2(dir, ["snapshot", "-l", ours]).stdout).toBe("")
  })

  it("info lists snapshots made here exactly as qemu-img info does", () => {
    const { ours } = twins("info")
    qcow2(dir, ["snapshot", "-c", "one", ours])
    qcow2(dir, ["snapshot", "-c", "two", ours])
    for (const extra of [[], ["--output=json"]]) {
      expect(qcow2(dir, ["info", ...extra, ours]).stdout).toBe(qemu(dir, "qemu-img", ["info", ...extra, ours]).stdout)
    }
    expect(qcow2(dir, ["snapshot", "-l", ours]).stdout).toBe(qemu(dir, "qemu-img", ["snapshot", "-l", ours]).stdout)
  })

  it("refuses raw images with qemu-img's messages", () => {
    const ref = path.join(dir, "r-ref.raw")
    const ours = path.join(dir, "r-ours.raw")
    for (const f of [ref, ours]) fs.writeFileSync(f, Buffer.alloc(1 << 20))
    for (const args of [["-c", "x"], ["-a", "x"], ["-d", "x"], ["-l"]]) {
      const { expected, actual } = both((f) => ["snapshot", ...args, f], ref, ours)
      expect(actual.status).toBe(expected.status)
      const lastLine = (s: string) => normalize(s).trim().split("\n").at(-1) ?? ""
      expect(lastLine(actual.stderr)).toBe(lastLine(expected.stderr))
      expect(actual.stdout).toBe(expected.stdout)
    }
  })
})

describe("qcow2 convert -l", () => {
  it("converts a snapshot's content as qemu-img does, and fails the same way", () => {
    const { ref } = twins("conv")
    qemu(dir, "qemu-img", ["snapshot", "-c", "s", ref])
    qemu(dir, "qemu-io", ["-c", "write -P 0x55 0 1M", ref])
    for (const selector of ["s", "1", "snapshot.id=1", "snapshot.name=s", "snapshot.id=1,snapshot.name=s"]) {
      for (const format of ["raw", "qcow2"]) {
        const expected = path.join(dir, `conv-expected.${format}`)
        const actual = path.join(dir, `conv-actual.${format}`)
        qemu(dir, "qemu-img", ["convert", "-l", selector, "-O", format, ref, expected])
        expect(qcow2(dir, ["convert", "-l", selector, "-O", format, ref, actual]).status).toBe(0)
        expect(qemu(dir, "qemu-img", ["compare", "-f", format, "-F", format, expected, actual]).stdout).toBe("Images are identical.\n")
      }
    }
    for (const selector of ["nope", "snapshot.id=2", "snapshot.id=1,snapshot.name=t", "snapshot.foo=1"]) {
      const { expected, actual } = both((f) => ["convert", "-l", selector, "-O", "raw", f, path.join(dir, "never.raw")], ref, ref)
      expect({ selector, status: actual.status, stderr: normalize(actual.stderr) }).toEqual({ selector, status: expected.status, stderr: normalize(expected.stderr) })
    }
  })
})
