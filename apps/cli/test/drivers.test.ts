/**
 * QEMU's block drivers other than the formats, as names open them, held to
 * qemu-img / qemu-io 7.2: the null-co device (iotests 133, 150), the
 * compress filter (214) and quorum as an image's file (110). Same stdout
 * (timings masked), stderr (program name aside) and exit code; images
 * written through them checked and compared by qemu-img.
 */
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const masked = (run: Run) => ({
  status: run.status,
  stdout: run.stdout.replace(/; [^\n]*ops\/sec\)/g, ";"),
  stderr: run.stderr.replace(/^qcow2:/gm, "PROG:").replace(/^qemu-(?:img|io):/gm, "PROG:")
})

let dir: string
beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-drivers-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** The same qemu-img command here and by qemu-img. */
const sameAsQemuImg = (args: ReadonlyArray<string>) => expect(masked(qcow2(dir, args))).toEqual(masked(qemu(dir, "qemu-img", args, true)))
/** The same qemu-io command line here and by qemu-io. */
const sameAsQemuIo = (args: ReadonlyArray<string>) => expect(masked(qcow2(dir, ["io", ...args]))).toEqual(masked(qemu(dir, "qemu-io", args, true)))

describe("null-co", () => {
  const zeroes = 'json:{"driver":"null-co","size":1048576,"read-zeroes":true}'
  const garbage = 'json:{"driver":"null-co","size":1048576}'

  it("maps as qemu-img maps it: zeros with read-zeroes, unallocated without", () => {
    for (const name of [zeroes, garbage]) {
      sameAsQemuImg(["map", "--output=json", name])
      sameAsQemuImg(["map", "--output=json", "--start-offset=4096", name])
      sameAsQemuImg(["map", name])
    }
  })

  it("info, check and bad options as qemu-img answers them", () => {
    sameAsQemuImg(["info", "null-co://"])
    sameAsQemuImg(["info", "--output=json", "null-co://"])
    // The size rounds up to whole sectors (the name QEMU shows for an option list is its own JSON rendering, not compared).
    const info = JSON.parse(qcow2(dir, ["info", "--output=json", "--image-opts", "driver=null-co,size=1000"]).stdout)
    expect([info["virtual-size"], info.format, info["actual-size"]]).toEqual([1024, "null-co", 0])
    sameAsQemuImg(["check", zeroes])
    sameAsQemuImg(["info", "null-co://foo"])
    sameAsQemuImg(["info", 'json:{"driver":"null-co","size":1048576,"foo":1}'])
    sameAsQemuImg(["resize", zeroes, "2M"])
    sameAsQemuImg(["compare", zeroes, "null-co://"])
  })

  it("converts to an empty image (-S 512) or a fully written one (-S 0), as qemu-img does (iotest 150)", () => {
    for (const sparse of ["512", "0"]) {
      qemu(dir, "qemu-img", ["convert", "-O", "qcow2", "-S", sparse, zeroes, "theirs.qcow2"])
      const ours = qcow2(dir, ["convert", "-O", "qcow2", "-S", sparse, zeroes, "ours.qcow2"])
      expect(ours.status).toBe(0)
      expect(qemu(dir, "qemu-img", ["map", "--output=json", "ours.qcow2"]).stdout).toBe(qemu(dir, "qemu-img", ["map", "--output=json", "theirs.qcow2"]).stdout)
      expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"]).status).toBe(0)
    }
  })

  it("qemu-io: writes discarded, reads zeros, reopen and info as qemu-io (iotest 133)", () => {
    const commands = ["write -z 0 4k", "discard 0 4k", "truncate 2M", "length", "write -c 0 64k", "write 1048000 1000", "map", "alloc 0 4k", "flush", "read -P 0 0 4k"]
    sameAsQemuIo([...commands.flatMap((c) => ["-c", c]), zeroes])
    sameAsQemuIo(["-r", "-c", "write 0 4k", zeroes])
    sameAsQemuIo(["-c", "map", garbage])
    sameAsQemuIo(["-f", "null-co", "-c", "reopen", "-c", "info", "json:{'driver': 'null-co', 'size': 65536}"])
    sameAsQemuIo(["-c", "info", "null-co://foo"])
    sameAsQemuIo(["-c", "info", 'json:{"driver":"null-co","read-zeroes":"on","foo":1}'])
  })
})

describe("compress filter", () => {
  const over = (file: string) => `driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=${file}`

  it("pads writes to whole clusters and stores them compressed; the same image, output and errors as qemu-io", () => {
    const commands = ["write -P 0xbb 0 100k", "write -P 0xcc 96k 64k", "info", "write -z 512k 64k", "discard 0 64k", "write -P 1 1000k 24k", "map", "read -P 0xbb 64k 32k", "write -c 640k 64k", "truncate 2M", "length"]
    const runs = ["theirs.qcow2", "ours.qcow2"].map((file) => {
      qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", file, "1M"])
      const args = ["--image-opts", ...commands.flatMap((c) => ["-c", c]), over(file)]
      return masked(file === "ours.qcow2" ? qcow2(dir, ["io", ...args]) : qemu(dir, "qemu-io", args, true))
    })
    expect(runs[1]).toEqual(runs[0])
    expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"]).stdout).toBe(qemu(dir, "qemu-img", ["check", "theirs.qcow2"]).stdout)
    expect(qemu(dir, "qemu-img", ["map", "--output=json", "ours.qcow2"]).stdout).toBe(qemu(dir, "qemu-img", ["map", "--output=json", "theirs.qcow2"]).stdout)
    expect(qemu(dir, "qemu-img", ["compare", "ours.qcow2", "theirs.qcow2"]).stdout).toBe("Images are identical.\n")
  })

  it("a json: name of the filter compresses too (iotest 214: 8 compressed clusters)", () => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "214.qcow2", "2M"])
    expect(qcow2(dir, ["io", "--image-opts", "-c", "write -P 0xbb 0 224k", over("214.qcow2")]).status).toBe(0)
    const json = `json:{"driver":"compress","file":{"driver":"qcow2","file":{"driver":"file","filename":"214.qcow2"}}}`
    expect(qcow2(dir, ["io", "-c", "write -P 0xcc 272k 224k", json]).status).toBe(0)
    const check = JSON.parse(qemu(dir, "qemu-img", ["check", "--output=json", "214.qcow2"]).stdout)
    expect(check["compressed-clusters"]).toBe(8)
    expect(qemu(dir, "qemu-io", ["-c", "read -P 0xbb 0 224k", "-c", "read -P 0 224k 48k", "-c", "read -P 0xcc 272k 224k", "214.qcow2"]).stdout).not.toContain("Pattern verification failed")
  })

  it("info of the filter node: format compress, no backing file or format-specific data", () => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "c-base.qcow2", "1M"])
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", "c-base.qcow2", "-F", "qcow2", "c-top.qcow2"])
    for (const output of ["human", "json"]) {
      const args = ["info", `--output=${output}`, "--image-opts", "driver=compress,file.driver=qcow2,file.file.filename=c-top.qcow2"]
      const withoutName = (text: string) => text.replace(/^(image: |\s*"filename": ).*$/gm, "")
      expect(withoutName(qcow2(dir, args).stdout)).toBe(withoutName(qemu(dir, "qemu-img", args).stdout))
    }
  })

  it("refuses what QEMU's filter refuses, with its messages", () => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", "plain.raw", "1M"])
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "plain.qcow2", "1M"])
    sameAsQemuIo(["--image-opts", "-c", "write 0 4k", "driver=compress,file.driver=raw,file.file.filename=plain.raw"])
    sameAsQemuIo(["--image-opts", "-c", "write 0 4k", "driver=compress,file.driver=file,file.filename=plain.raw"])
    sameAsQemuIo(["--image-opts", "-c", "write 0 4k", "driver=compress,file.driver=qcow2,file.file.filename=plain.qcow2,foo=1"])
    sameAsQemuIo(["-r", "--image-opts", "-c", "write 0 4k", "driver=compress,file.driver=qcow2,file.file.filename=plain.qcow2"])
  })
})

describe("quorum", () => {
  const quorum = (threshold: number, a: string, b: string, extra = "") =>
    `"driver":"quorum","vote-threshold":${threshold},"children":[{"driver":"file","filename":"${a}"},{"driver":"file","filename":"${b}"}]${extra}`
  const overQuorum = (threshold: number, a: string, b: string, extra = "") => `json:{"driver":"qcow2","backing":null,"file":{${quorum(threshold, a, b, extra)}}}`
  const withoutName = (text: string) => text.replace(/^(image: |\s*"filename": ).*$/gm, "")

  beforeAll(() => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "q-base.qcow2", "1M"])
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", "q-base.qcow2", "-F", "qcow2", "q.qcow2"])
    fs.copyFileSync(`${dir}/q.qcow2`, `${dir}/q.qcow2.copy`)
    for (const [name, pattern] of [["qa.raw", "0x11"], ["qb.raw", "0x22"], ["qc.raw", "0x11"]] as const) {
      qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", name, "64k"])
      qemu(dir, "qemu-io", ["-f", "raw", "-c", `write -P ${pattern} 0 64k`, name])
    }
  })

  it("info of an image over a quorum: its backing file's path cannot be determined (iotest 110)", () => {
    const name = `json:{"driver":"qcow2","file":{${quorum(1, "q.qcow2", "q.qcow2.copy")}}}`
    for (const output of ["human", "json"]) {
      const ours = qcow2(dir, ["info", `--output=${output}`, name])
      const theirs = qemu(dir, "qemu-img", ["info", `--output=${output}`, name])
      expect(ours.status).toBe(0)
      expect(withoutName(ours.stdout)).toBe(withoutName(theirs.stdout))
    }
  })

  it("writes reach every child; reads vote, as qemu-io's quorum does", () => {
    const name = overQuorum(2, "q.qcow2", "q.qcow2.copy")
    expect(qcow2(dir, ["io", "-c", "write -P 9 0 64k", "-c", "read -P 9 0 64k", name]).status).toBe(0)
    expect(fs.readFileSync(`${dir}/q.qcow2`).equals(fs.readFileSync(`${dir}/q.qcow2.copy`))).toBe(true)
    expect(qemu(dir, "qemu-img", ["check", "q.qcow2"]).status).toBe(0)
    const raw = (threshold: number, a: string, b: string, extra = "") => `json:{${quorum(threshold, a, b, extra)}}`
    for (const [threshold, a, b] of [[1, "qa.raw", "qb.raw"], [1, "qb.raw", "qa.raw"], [2, "qa.raw", "qb.raw"], [2, "qa.raw", "qc.raw"]] as const) {
      const args = ["-c", "read -v 0 1", "-c", "read -v 4k 1"]
      const ours = masked(qcow2(dir, ["io", "-f", "raw", ...args, `json:{"driver":"raw","file":{${quorum(threshold, a, b)}}}`]))
      const theirs = masked(qemu(dir, "qemu-io", [...args, raw(threshold, a, b)], true))
      expect([ours.stdout, ours.status]).toEqual([theirs.stdout, theirs.status])
    }
  })

  it("rewrite-corrupted writes the winning version over the child that disagreed, as qemu-io's quorum does", () => {
    const files = (tag: string) => ["qa", "qb", "qc"].map((n) => `${tag}-${n}.raw`)
    for (const tag of ["ours", "theirs"]) for (const [i, n] of ["qa", "qb", "qc"].entries()) fs.copyFileSync(`${dir}/${n}.raw`, `${dir}/${files(tag)[i]}`)
    const three = (tag: string) =>
      `"driver":"quorum","vote-threshold":2,"rewrite-corrupted":true,"children":[${files(tag).map((f) => `{"driver":"file","filename":"${f}"}`).join(",")}]`
    const ours = masked(qcow2(dir, ["io", "-f", "raw", "-c", "read -P 0x11 4k 8k", `json:{"driver":"raw","file":{${three("ours")}}}`]))
    const theirs = masked(qemu(dir, "qemu-io", ["-c", "read -P 0x11 4k 8k", `json:{${three("theirs")}}`]))
    expect(ours).toEqual(theirs)
    expect(fs.readFileSync(`${dir}/ours-qb.raw`).equals(fs.readFileSync(`${dir}/theirs-qb.raw`))).toBe(true)
    expect(fs.readFileSync(`${dir}/ours-qb.raw`).subarray(4096, 12288).every((b) => b === 0x11)).toBe(true)
  })

  it("refuses bad quorum options with QEMU's messages", () => {
    for (const [threshold, extra] of [[3, ""], [0, ""], [1, ',"read-pattern":"x"'], [1, ',"foo":1'], [1, ',"rewrite-corrupted":true,"read-pattern":"fifo"'], [1, ',"blkverify":true']] as const) {
      const ours = masked(qcow2(dir, ["info", overQuorum(threshold, "qa.raw", "qc.raw", extra)]))
      const theirs = masked(qemu(dir, "qemu-img", ["info", overQuorum(threshold, "qa.raw", "qc.raw", extra)], true))
      expect(ours).toEqual(theirs)
    }
  })
})
