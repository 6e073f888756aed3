import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, qcow2, qemu } from "./helpers.js"

const dir = makeTempDir("qcow2-image-opts-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const secret = (pass: string) => ["--object", `secret,id=sec0,data=${pass}`]
const opts = "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=sec0"

describe("--image-opts with --object secret (encrypted images as qemu-img opens them)", () => {
  it("reads, converts and refuses a wrong secret like qemu-img", () => {
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", ...secret("pw"), "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=200", "e.qcow2", "1M"])
    qemu(dir, "qemu-io", [...secret("pw"), "--image-opts", "-c", "write -P 9 0 64k", "-c", "write -P 7 500k 3k", opts])
    const read = qcow2(dir, ["io", ...secret("pw"), "--image-opts", "-c", "read -P 9 0 64k", "-c", "read -P 7 500k 3k", opts])
    expect(read.status).toBe(0)
    expect(qcow2(dir, ["convert", ...secret("pw"), "--image-opts", opts, "-O", "raw", "ours.raw"]).status).toBe(0)
    qemu(dir, "qemu-img", ["convert", ...secret("pw"), "--image-opts", opts, "-O", "raw", "theirs.raw"])
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "ours.raw")), fs.readFileSync(path.join(dir, "theirs.raw")))).toBe(0)
    const wrong = qcow2(dir, ["io", ...secret("bad"), "--image-opts", "-c", "read 0 1", opts])
    expect(wrong.status).toBe(1)
    expect(wrong.stderr).toContain("Invalid password")
  })
})
