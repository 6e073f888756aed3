import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const dir = makeTempDir("qcow2-luks-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const secret = ["--object", "secret,id=s0,data=pw"]
const opts = (file: string) => `driver=luks,file.filename=${file},key-secret=s0`
/** The program name QEMU prefixes its messages with, and ours. */
const unprefixed = (r: Run) => r.stderr.replace(/^(qemu-img|qemu-io|qcow2): /gm, "")

const qemuCreate = (args: ReadonlyArray<string>) => qemu(dir, "qemu-img", args, true)

describe("-f luks: raw LUKS volumes as qemu-img handles them", () => {
  it("create -f luks prints qemu-img's line and makes a file of qemu-img's size that qemu-io unlocks", () => {
    const args = ["create", "-f", "luks", ...secret, "-o", "key-secret=s0,iter-time=10,cipher-alg=aes-256,hash-alg=sha256", "ours.luks", "3M"]
    const ours = qcow2(dir, args)
    expect(ours.status, ours.stderr).toBe(0)
    const theirs = qemuCreate([...args.slice(0, -2), "theirs.luks", "3M"])
    expect(ours.stdout.replace("ours.luks", "X")).toBe(theirs.stdout.replace("theirs.luks", "X"))
    expect(fs.statSync(path.join(dir, "ours.luks")).size).toBe(fs.statSync(path.join(dir, "theirs.luks")).size)
    const io = qemu(dir, "qemu-io", [...secret, "--image-opts", "-c", "write -P 0x5a 4095 10000", "-c", "read -P 0x5a 4095 10000", opts("ours.luks")])
    expect(io.stdout).toContain("read 10000/10000 bytes at offset 4095")
    const back = qcow2(dir, ["io", ...secret, "--image-opts", "-c", "read -P 0x5a 4095 10000", opts("ours.luks")])
    expect(back.status, back.stderr).toBe(0)
  })

  it("info (probed, no key needed) matches qemu-img in human and JSON form", () => {
    for (const output of ["human", "json"]) {
      const ours = qcow2(dir, ["info", `--output=${output}`, "ours.luks"])
      const theirs = qemu(dir, "qemu-img", ["info", `--output=${output}`, "ours.luks"])
      expect(ours.status, ours.stderr).toBe(0)
      // actual-size / disk size may differ by what the file system allocated for each run's writes.
      const mask = (text: string) => text.replace(/("actual-size": )\d+/, "$1N").replace(/(disk size: ).*/, "$1N")
      expect(mask(ours.stdout)).toBe(mask(theirs.stdout))
    }
  })

  it("convert from and compare with a luks volume agree with qemu-img; check is not supported (exit 63)", () => {
    qemu(dir, "qemu-io", [...secret, "--image-opts", "-c", "write -P 0x11 1M 64k", opts("theirs.luks")])
    expect(qcow2(dir, ["convert", ...secret, "--image-opts", opts("theirs.luks"), "-O", "raw", "ours.raw"]).status).toBe(0)
    qemu(dir, "qemu-img", ["convert", ...secret, "--image-opts", opts("theirs.luks"), "-O", "raw", "theirs.raw"])
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "ours.raw")), fs.readFileSync(path.join(dir, "theirs.raw")))).toBe(0)
    const same = qcow2(dir, ["compare", ...secret, "--image-opts", opts("theirs.luks"), "driver=raw,file.filename=theirs.raw"])
    expect(same.stdout).toBe("Images are identical.\n")
    const check = qcow2(dir, ["check", ...secret, "--image-opts", opts("theirs.luks")])
    const qemuCheck = qemu(dir, "qemu-img", ["check", ...secret, "--image-opts", opts("theirs.luks")], true)
    expect([check.status, unprefixed(check)]).toEqual([qemuCheck.status, unprefixed(qemuCheck)])
  })

  it("without the key, or with a wrong one, opens fail with QEMU's messages", () => {
    const cases: ReadonlyArray<[string, ReadonlyArray<string>]> = [
      ["qemu-io", ["-f", "luks", "-c", "read 0 512", "ours.luks"]],
      ["qemu-img", ["convert", "-f", "luks", "-O", "raw", "ours.luks", "x.raw"]],
      ["qemu-img", ["create", "-f", "luks", "y.luks", "1M"]],
      ["qemu-img", ["create", "-f", "luks", ...secret, "-o", "key-secret=nope", "y.luks", "1M"]]
    ]
    for (const [tool, args] of cases) {
      const ours = qcow2(dir, tool === "qemu-io" ? ["io", ...args] : args)
      const theirs = qemu(dir, tool, args, true)
      expect(ours.status, args.join(" ")).toBe(theirs.status)
      expect(unprefixed(ours).replace(/device \S+:/, "device X:")).toBe(unprefixed(theirs).replace(/device \S+:/, "device X:"))
    }
    const wrong = qcow2(dir, ["io", "--object", "secret,id=s0,data=bad", "--image-opts", "-c", "read 0 1", opts("ours.luks")])
    expect(wrong.status).toBe(1)
    expect(wrong.stderr).toContain("Invalid password, cannot unlock any keyslot")
  })
})
