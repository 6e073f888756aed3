import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const dir = makeTempDir("qcow2-luks-amend-")
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const SECRETS = [0, 1, 2].flatMap((i) => ["--object", `secret,id=sec${i},data=hunter${i}`])
const unprefixed = (r: Run) => r.stderr.replace(/^(qemu-img|qemu-io|qcow2): /gm, "")

const qemuImg = (args: ReadonlyArray<string>) => qemu(dir, "qemu-img", args, true)

interface Format {
  readonly name: "qcow2" | "luks"
  /** Option prefix of the key-slot options. */
  readonly prefix: string
  readonly imageOpts: (file: string, secret: string) => string
}

const FORMATS: ReadonlyArray<Format> = [
  { name: "qcow2", prefix: "encrypt.", imageOpts: (f, s) => `driver=qcow2,file.filename=${f},encrypt.key-secret=${s}` },
  { name: "luks", prefix: "", imageOpts: (f, s) => `driver=luks,file.filename=${f},key-secret=${s}` }
]

/** Which of sec0..sec2 open `file` (by qemu-io). */
const opening = (format: Format, file: string): ReadonlyArray<string> =>
  ["sec0", "sec1", "sec2"].filter(
    (s) => qemu(dir, "qemu-io", [...SECRETS, "--image-opts", "-c", "read -P 0x5a 0 4k", format.imageOpts(file, s)], true).stdout.includes("read 4096/4096")
  )

describe.each(FORMATS)("amend key slots of $name images as qemu-img 7.2 does", (format) => {
  const p = format.prefix
  const ours = `ours.${format.name}`
  const theirs = `theirs.${format.name}`

  it("the same commands give the same output, exit codes and working secrets on twin images", () => {
    const createOpts = format.name === "qcow2" ? `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10` : "key-secret=sec0,iter-time=10"
    expect(qemuImg(["create", "-f", format.name, ...SECRETS, "-o", createOpts, ours, "1M"]).status).toBe(0)
    expect(qemu(dir, "qemu-io", [...SECRETS, "--image-opts", "-c", "write -P 0x5a 0 4k", format.imageOpts(ours, "sec0")]).status).toBe(0)
    fs.copyFileSync(path.join(dir, ours), path.join(dir, theirs))
    /** [opening secret, -o list, --force, the secrets that open the image afterwards when it changes] */
    const steps: ReadonlyArray<readonly [string, string, boolean, ReadonlyArray<string>?]> = [
      ["sec0", `${p}state=active,${p}new-secret=sec1,${p}iter-time=10,${p}keyslot=3`, false, ["sec0", "sec1"]],
      ["sec1", `${p}state=active,${p}new-secret=sec2,${p}iter-time=10`, false, ["sec0", "sec1", "sec2"]],
      ["sec0", `${p}state=active,${p}new-secret=sec2,${p}keyslot=3`, false],
      ["sec0", `${p}state=active,${p}new-secret=sec9`, false],
      ["sec0", `${p}state=inactive,${p}keyslot=5`, false],
      ["sec1", `${p}state=inactive,${p}old-secret=sec0`, false, ["sec1", "sec2"]],
      ["sec1", `${p}state=inactive,${p}keyslot=1`, false, ["sec1"]],
      ["sec1", `${p}state=inactive,${p}old-secret=sec1`, false],
      ["sec1", `${p}state=inactive,${p}keyslot=3`, true, []]
    ]
    // Refusals that cost no key derivation, on the qcow2 twin only.
    const refusals: ReadonlyArray<readonly [string, string, boolean, ReadonlyArray<string>?]> = [
      ["sec1", `${p}new-secret=sec1`, false],
      ["sec1", `${p}state=on`, false],
      ["sec1", `${p}state=active,${p}keyslot=x`, false],
      ["sec1", `${p}state=active,${p}new-secret=sec1,${p}keyslot=8`, false],
      ["sec1", `${p}state=inactive,${p}new-secret=sec1`, false],
      ["sec1", `${p}state=inactive,${p}iter-time=10`, false],
      ["sec1", `${p}state=inactive`, false],
      ["sec1", `${p}state=inactive,${p}keyslot=3,${p}old-secret=sec0`, false]
    ]
    const all = format.name === "qcow2" ? [...steps.slice(0, 7), ...refusals, ...steps.slice(7)] : steps
    for (const [secret, options, force, openers] of all) {
      const args = (file: string) => ["amend", ...SECRETS, "--image-opts", format.imageOpts(file, secret), "-o", options, ...(force ? ["--force"] : [])]
      const a = qcow2(dir, args(ours))
      const b = qemuImg(args(theirs))
      expect([a.status, unprefixed(a), a.stdout], options).toEqual([b.status, unprefixed(b), b.stdout])
      if (openers !== undefined) expect(opening(format, ours), `ours after ${options}`).toEqual(openers)
      if (format.name === "qcow2" && openers?.[0] !== undefined) {
        const check = qemu(dir, "qemu-img", ["check", ...SECRETS, "--image-opts", format.imageOpts(ours, openers[0])], true)
        expect(check.stdout).toContain("No errors were found")
      }
    }
    expect(opening(format, theirs)).toEqual([])
  }, 240_000)

  it("an image qemu-img gave a new slot opens here with it, and one amended here opens in QEMU", () => {
    const a = `cross-a.${format.name}`
    const createOpts = format.name === "qcow2" ? `encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10` : "key-secret=sec0,iter-time=10"
    expect(qcow2(dir, ["create", "-f", format.name, ...SECRETS, "-o", createOpts, a, "1M"]).status).toBe(0)
    expect(qcow2(dir, ["io", ...SECRETS, "--image-opts", "-c", "write -P 0x5a 0 4k", format.imageOpts(a, "sec0")]).status).toBe(0)
    const add = ["amend", ...SECRETS, "--image-opts", format.imageOpts(a, "sec0"), "-o", `${p}state=active,${p}new-secret=sec2,${p}iter-time=10`]
    expect(qemuImg(add).status).toBe(0)
    const read = qcow2(dir, ["io", ...SECRETS, "--image-opts", "-c", "read -P 0x5a 0 4k", format.imageOpts(a, "sec2")])
    expect(read.stdout).toContain("read 4096/4096 bytes at offset 0")
    const erase = ["amend", ...SECRETS, "--image-opts", format.imageOpts(a, "sec2"), "-o", `${p}state=inactive,${p}old-secret=sec0`]
    expect(qcow2(dir, erase).status).toBe(0)
    expect(opening(format, a)).toEqual(["sec2"])
    const info = qemu(dir, "qemu-img", ["info", "--output=json", a]).stdout
    const slots = (JSON.parse(info) as { "format-specific": { data: { slots?: Array<{ active: boolean }>; encrypt?: { slots: Array<{ active: boolean }> } } } })["format-specific"].data
    expect((slots.slots ?? slots.encrypt!.slots).map((s) => s.active)).toEqual([false, true, false, false, false, false, false, false])
  }, 120_000)
})

describe("amend -o help for luks", () => {
  it("lists the luks driver's amend options as qemu-img does", () => {
    const a = qcow2(dir, ["amend", "-f", "luks", "-o", "help"])
    const b = qemu(dir, "qemu-img", ["amend", "-f", "luks", "-o", "help"])
    expect([a.status, a.stdout]).toEqual([b.status, b.stdout])
  })
})
