/**
 * NBD exports as image names (`nbd:unix:…`, `nbd+unix://…`, `nbd://…`,
 * `--image-opts driver=nbd,…`): `qcow2 info`, `map`, `convert` and `io`
 * through a real qemu-nbd print what qemu-img / qemu-io print through it,
 * with the same messages for names that do not open.
 */
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, makeTempDir, qcow2, qemu, startQemuNbd, stopServer, type Run } from "./helpers.js"

let dir = ""
let socket = ""
let server: ChildProcess | undefined


beforeAll(async () => {
  buildBundle()
  dir = makeTempDir("qcow2-nbd-names-")
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "base.qcow2", "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x11 0 2M", "base.qcow2"])
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "4M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x22 1M 2M", "top.qcow2"])
  socket = path.join(dir, "nbd.sock")
  server = await startQemuNbd(socket, ["-t", "-r", "-A", "-x", "top", "-f", "qcow2", path.join(dir, "top.qcow2")])
})

afterAll(async () => {
  if (server !== undefined) await stopServer(server)
  fs.rmSync(dir, { recursive: true, force: true })
})

/** What a run shows, with the program name of its messages taken out. */
const shown = (run: Run) => ({ status: run.status, stdout: run.stdout, stderr: run.stderr.replace(/^(qcow2|qemu-img|qemu-io): /gm, "") })

describe("NBD names", () => {
  it("info and map print what qemu-img prints through NBD", () => {
    const names = [`nbd:unix:${socket}:exportname=top`, `nbd+unix:///top?socket=${socket}`]
    for (const name of names) {
      for (const args of [["info", name], ["info", "--output=json", name], ["map", "--output=json", "-f", "raw", name], ["map", "-f", "raw", name]]) {
        expect(shown(qcow2(dir, args)), args.join(" ")).toEqual(shown(qemu(dir, "qemu-img", args)))
      }
    }
    const opts = `driver=nbd,server.type=unix,server.path=${socket},export=top`
    for (const args of [["info", "--image-opts", opts], ["map", "--output=json", "--image-opts", opts], ["map", "--output=json", "--image-opts", `${opts},x-dirty-bitmap=qemu:allocation-depth`]]) {
      expect(shown(qcow2(dir, args)), args.join(" ")).toEqual(shown(qemu(dir, "qemu-img", args)))
    }
  })

  it("convert reads the export as qemu-img does, and qemu-io reads through it", () => {
    const name = `nbd:unix:${socket}:exportname=top`
    expect(qcow2(dir, ["convert", "-f", "raw", "-O", "raw", name, "ours.raw"]).status).toBe(0)
    qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "raw", name, "theirs.raw"])
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "ours.raw")), fs.readFileSync(path.join(dir, "theirs.raw")))).toBe(0)
    const io = qcow2(dir, ["io", "-r", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 2M", "-c", "read -P 0 3M 1M", name])
    expect(io.status).toBe(0)
    expect(io.stdout.split("\n").filter((l) => l.startsWith("read "))).toEqual(["read 1048576/1048576 bytes at offset 0", "read 2097152/2097152 bytes at offset 1048576", "read 1048576/1048576 bytes at offset 3145728"])
  })

  it("fails as qemu-img does for names that do not open", () => {
    const names = [`nbd:unix:${path.join(dir, "none.sock")}`, `nbd+unix:///nope?socket=${socket}`, "nbd:foo", "nbd+unix://", `nbd+unix:///?socket=${socket}&x=1`]
    for (const name of names) expect(shown(qcow2(dir, ["info", name])), name).toEqual(shown(qemu(dir, "qemu-img", ["info", name], true)))
    // The export is read-only: a read-write open is refused.
    const write = ["-f", "raw", "-c", "write 0 512", `nbd:unix:${socket}:exportname=top`]
    expect(shown(qcow2(dir, ["io", ...write]))).toEqual(shown(qemu(dir, "qemu-io", write, true)))
    const opts = [`driver=nbd,server.type=unix`, `driver=nbd,path=/x,server.type=unix`, `driver=nbd,server.type=unix,server.path=${socket},export=top,x-dirty-bitmap=foo:bar`]
    for (const o of opts) expect(shown(qcow2(dir, ["info", "--image-opts", o])), o).toEqual(shown(qemu(dir, "qemu-img", ["info", "--image-opts", o], true)))
  })
})
