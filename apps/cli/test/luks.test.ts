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

describe("encrypted qcow2 writes that fail part-way", () => {
  it("a several-MiB write whose second bounce-buffer piece fails (host sector 10240, blkdebug EIO) ends as qemu-io's does; the image stays clean and the range reads old or new bytes only", () => {
    const qcowSecret = ["--object", "secret,id=s,data=pw"]
    const failing = (file: string) =>
      `driver=qcow2,encrypt.key-secret=s,file.driver=blkdebug,file.image.filename=${file},` +
      "file.inject-error.0.event=write_aio,file.inject-error.0.sector=10240,file.inject-error.0.errno=5"
    const plain = (file: string) => `driver=qcow2,file.filename=${file},encrypt.key-secret=s`
    const results = ["ours", "theirs"].map((who) => {
      const file = `${who}-fail.qcow2`
      qemuCreate(["create", "-q", "-f", "qcow2", ...qcowSecret, "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", file, "8M"])
      const args = [...qcowSecret, "--image-opts", "-c", "write -P 7 0 5M", failing(file)]
      const run = who === "ours" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true)
      const check = qemu(dir, "qemu-img", ["check", ...qcowSecret, "--image-opts", plain(file)], true)
      const raw = path.join(dir, `${who}-fail.raw`)
      qemu(dir, "qemu-img", ["convert", ...qcowSecret, "--image-opts", plain(file), "-O", "raw", raw])
      return { run, check, content: fs.readFileSync(raw) }
    })
    const [ours, theirs] = results
    expect(ours!.run.status).toBe(theirs!.run.status)
    expect(unprefixed(ours!.run) + ours!.run.stdout).toBe(unprefixed(theirs!.run) + theirs!.run.stdout)
    for (const { check, content } of results) {
      expect(check.status, check.stdout + check.stderr).toBe(0)
      expect(check.stdout).toContain("No errors were found on the image.")
      // A failed write leaves each sector as it was (zeros) or as written (0x07), nothing else
      // (QEMU links the pieces that were written; we abandon the whole allocation).
      const zeros = Buffer.alloc(512)
      const sevens = Buffer.alloc(512, 7)
      for (let at = 0; at < 5 << 20; at += 512) {
        const sector = content.subarray(at, at + 512)
        expect(sector.equals(zeros) || sector.equals(sevens), `sector at ${at}`).toBe(true)
      }
      expect(content.subarray(5 << 20).every((b) => b === 0)).toBe(true)
    }
  })
})
