import * as fs from "node:fs"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const dir = makeTempDir("qcow2-luks-chain-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const SECRETS = ["--object", "secret,id=sec0,data=astrochicken", "--object", "secret,id=sec1,data=furby"]
const unprefixed = (r: Run) => r.stderr.replace(/^(qemu-img|qemu-io|qcow2): /gm, "")

const qemuImg = (args: ReadonlyArray<string>) => qemu(dir, "qemu-img", args, true)

describe("encrypted backing chains with a secret per layer (iotests 188, 189)", () => {
  const chain = "driver=qcow2,file.filename=top.qcow2,backing.driver=qcow2,backing.file.filename=base.qcow2,backing.encrypt.key-secret=sec0,encrypt.key-secret=sec1"

  it("create over an encrypted backing file needs no key for it, and the layers open with their own secrets", () => {
    expect(qemuImg(["create", "-f", "qcow2", ...SECRETS, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", "base.qcow2", "1M"]).status).toBe(0)
    qemu(dir, "qemu-io", [...SECRETS, "--image-opts", "-c", "write -P 0xa 0 1M", "driver=qcow2,file.filename=base.qcow2,encrypt.key-secret=sec0"])
    const create = ["create", "-f", "qcow2", "--object", "secret,id=sec1,data=furby", "-o", "encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10", "-b", "base.qcow2", "-F", "qcow2"]
    const ours = qcow2(dir, [...create, "top.qcow2"])
    const theirs = qemuImg([...create, "top-q.qcow2"])
    expect([ours.status, ours.stdout.replace("top.qcow2", "X"), unprefixed(ours)]).toEqual([theirs.status, theirs.stdout.replace("top-q.qcow2", "X"), unprefixed(theirs)])
    const write = qcow2(dir, ["io", ...SECRETS, "-c", "write -P 0xe 0 1024", "--image-opts", chain])
    expect(write.stdout).toContain("wrote 1024/1024 bytes at offset 0")
    const read = qemu(dir, "qemu-io", [...SECRETS, "-c", "read -P 0xe 0 1024", "-c", "read -P 0xa 1024 64512", "--image-opts", chain])
    expect(read.stdout).toContain("read 1024/1024 bytes at offset 0")
    expect(read.stdout).toContain("read 64512/64512 bytes at offset 1024")
    expect(qcow2(dir, ["io", "--object", "secret,id=sec1,data=furby", "-c", "read 0 1", "--image-opts", chain]).stderr).toContain("No secret with id 'sec0'")
  })

  it("convert to a preallocated encrypted image writes the zeros it cannot assume (qcow2_has_zero_init)", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "empty.qcow2", "1M"])
    const convert = qcow2(dir, ["convert", "-O", "qcow2", ...SECRETS, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,preallocation=metadata", "empty.qcow2", "pre.qcow2"])
    expect(convert.status, convert.stderr).toBe(0)
    const compare = qemu(dir, "qemu-img", ["compare", ...SECRETS, "--image-opts", "driver=qcow2,file.filename=empty.qcow2", "driver=qcow2,file.filename=pre.qcow2,encrypt.key-secret=sec0"], true)
    expect(compare.stdout).toBe("Images are identical.\n")
  })
})
