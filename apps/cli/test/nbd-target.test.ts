/**
 * NBD exports as targets: `qcow2 convert` (with and without -n) and
 * `qcow2 dd` write into an export served by a real qemu-nbd (`-f raw` over
 * a file); the file then compares equal with the source under
 * `qemu-img compare`, and an export too small fails as qemu-img fails.
 */
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu, startQemuNbd, stopServer, type Run } from "./helpers.js"

let dir = ""
const servers: ChildProcess[] = []


/** Serves `file` (raw) read-write on a new Unix socket until the tests end; its NBD name. `log`: where qemu-nbd traces each request it receives. */
const serve = async (file: string, log?: string): Promise<string> => {
  const socket = path.join(dir, `${path.basename(file)}.sock`)
  const trace = log === undefined ? [] : ["--trace", `enable=nbd_receive_request,file=${path.join(dir, log)}`]
  servers.push(await startQemuNbd(socket, [...trace, "-t", "-f", "raw", path.join(dir, file)]))
  return `nbd:unix:${socket}`
}

/**
 * The requests a traced export received: the data requests sorted (ours are
 * in flight together, qemu-img's one after another), then the last ones as
 * they came (the flush and the disconnect), each as "type flags from len".
 */
const requests = (log: string) => {
  const lines = fs.readFileSync(path.join(dir, log), "utf8").split("\n").filter((line) => line.includes("Got request"))
  const each = lines.map((line) => /\.flags = (\w+), \.type = (\w+), from = (\d+), len = (\d+)/.exec(line)!.slice(1).join(" "))
  return { data: each.slice(0, -2).sort(), last: each.slice(-2) }
}

/** A raw file of `size` bytes full of 0x33, so that zeros the copy must write show. */
const filled = (file: string, size: string) => {
  qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", file, size])
  qemu(dir, "qemu-io", ["-f", "raw", "-c", `write -P 0x33 0 ${size}`, file])
}

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-nbd-target-")
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "src.qcow2", "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x11 0 1M", "-c", "write -z 1M 1M", "-c", "write -P 0x22 3M 64k", "src.qcow2"])
})

afterAll(async () => {
  for (const server of servers) await stopServer(server)
  fs.rmSync(dir, { recursive: true, force: true })
})

/** What a run shows, with the program name of its messages taken out. */
const shown = (run: Run) => ({ status: run.status, stdout: run.stdout, stderr: run.stderr.replace(/^(qcow2|qemu-img): /gm, "") })

const identical = (file: string, source: string, sourceFormat: string) =>
  expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", sourceFormat, file, source], true).stdout).toBe("Images are identical.\n")

describe("NBD exports as targets", () => {
  it("convert -n and convert without -n write the source into the export, zeros included", async () => {
    filled("ours.raw", "4M")
    filled("theirs.raw", "4M")
    const ours = await serve("ours.raw", "ours.log")
    const theirs = await serve("theirs.raw", "theirs.log")
    expect(shown(qcow2(dir, ["convert", "-n", "-O", "raw", "src.qcow2", ours]))).toEqual({ status: 0, stdout: "", stderr: "" })
    identical("ours.raw", "src.qcow2", "qcow2")
    // The requests are qemu-img convert -n's: zero ranges as write-zeroes that may unmap, then a flush
    // (QEMU's nbd driver flushes even under convert's default cache=unsafe). The files' maps are not
    // compared: how ext4 records zeroed ranges depends on the order concurrent requests reach it.
    qemu(dir, "qemu-img", ["convert", "-n", "-O", "raw", "src.qcow2", theirs])
    const sent = requests("ours.log")
    expect(sent).toEqual(requests("theirs.log"))
    expect(sent.last).toEqual(["0x0 0x3 0 0", "0x0 0x2 0 0"])
    expect(sent.data.filter((request) => request.startsWith("0x0 0x6")).length).toBe(3)
    // Without -n (qemu-img accepts an export at least as large as the input).
    qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 0x44 0 4M", "ours.raw"])
    expect(qcow2(dir, ["convert", "-O", "raw", "src.qcow2", ours]).status).toBe(0)
    identical("ours.raw", "src.qcow2", "qcow2")
    // The nbd+unix:// form, from a raw source.
    qemu(dir, "qemu-img", ["convert", "-O", "raw", "src.qcow2", "src.raw"])
    qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 0x44 0 4M", "ours.raw"])
    expect(qcow2(dir, ["convert", "-n", "-f", "raw", "-O", "raw", "src.raw", `nbd+unix:///?socket=${path.join(dir, "ours.raw.sock")}`]).status).toBe(0)
    identical("ours.raw", "src.raw", "raw")
  })

  it("an export smaller than the input, or none listening, fails as qemu-img does, with and without -n", async () => {
    qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", "small.raw", "1M"])
    const small = await serve("small.raw")
    const none = `nbd:unix:${path.join(dir, "none.sock")}`
    const cases = [
      ["convert", "-O", "raw", "src.qcow2", small],
      ["convert", "-n", "-O", "raw", "src.qcow2", small],
      ["convert", "-O", "raw", "src.qcow2", none],
      ["convert", "-n", "-O", "raw", "src.qcow2", none],
      ["dd", "-O", "raw", "if=src.qcow2", `of=${none}`]
    ]
    for (const args of cases) {
      expect(shown(qcow2(dir, args)), args.join(" ")).toEqual(shown(qemu(dir, "qemu-img", args, true)))
    }
  })

  it("dd writes into the export, and refuses one too small as qemu-img dd does", async () => {
    filled("dd.raw", "4M")
    const target = await serve("dd.raw")
    expect(shown(qcow2(dir, ["dd", "-O", "raw", "bs=64k", "if=src.qcow2", `of=${target}`]))).toEqual({ status: 0, stdout: "", stderr: "" })
    identical("dd.raw", "src.qcow2", "qcow2")
    // count: only the first blocks are written; the rest of the export keeps its bytes.
    qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 4M", "dd.raw"])
    expect(qcow2(dir, ["dd", "-O", "raw", "bs=64k", "count=20", "if=src.qcow2", `of=${target}`]).status).toBe(0)
    const bytes = fs.readFileSync(path.join(dir, "dd.raw"))
    expect(bytes.subarray(0, 1 << 20).every((b) => b === 0x11)).toBe(true)
    expect(bytes.subarray(1 << 20, 20 << 16).every((b) => b === 0)).toBe(true)
    expect(bytes.subarray(20 << 16).every((b) => b === 0x33)).toBe(true)
    qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", "dd-small.raw", "1M"])
    const small = await serve("dd-small.raw")
    const args = ["dd", "-O", "raw", "bs=64k", "if=src.qcow2", `of=${small}`]
    expect(shown(qcow2(dir, args))).toEqual(shown(qemu(dir, "qemu-img", args, true)))
  })
})
