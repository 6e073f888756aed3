/**
 * NBD exports opened by name through the Promise API, served by a real
 * qemu-nbd on a Unix socket the test starts and stops: the guest view
 * reads byte for byte as `qemu-img convert -O raw` writes it, writes land
 * in the served file, and an export is refused as a convert target.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { readFileSync } from "node:fs"
import { createConnection } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { convert, open, ImageError } from "../src/index.js"
import { qemuImg, qemuIo, qemuRaw, sameBytes, tempDir } from "./helpers.js"

const accepting = (at: string): Promise<boolean> =>
  new Promise((resolve) => {
    const c = createConnection({ path: at })
    c.once("connect", () => {
      c.destroy()
      resolve(true)
    })
    c.once("error", () => resolve(false))
  })

describe("open of NBD names", () => {
  const tmp = tempDir()
  const servers: ChildProcess[] = []

  /** Serves `file` with qemu-nbd (`args` before the file) on a new socket until the tests end. */
  const serve = async (socketName: string, args: string[], file: string): Promise<string> => {
    const socket = tmp.path(socketName)
    servers.push(spawn("qemu-nbd", ["-k", socket, "-t", ...args, file], { stdio: "ignore" }))
    for (let i = 0; i < 500 && !(await accepting(socket)); i++) await new Promise((r) => setTimeout(r, 10))
    return socket
  }

  beforeAll(() => {
    qemuImg("create", "-q", "-f", "qcow2", tmp.path("base.qcow2"), "4M")
    qemuIo("-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "write -c -P 0x62 2M 64k", tmp.path("base.qcow2"))
    qemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", tmp.path("top.qcow2"))
    qemuIo("-f", "qcow2", "-c", "write -P 0x63 512k 128k", "-c", "write -z 3M 64k", tmp.path("top.qcow2"))
  })
  afterAll(async () => {
    for (const server of servers) {
      const exited = new Promise((resolve) => server.once("exit", resolve))
      server.kill("SIGTERM")
      await exited
    }
    tmp.cleanup()
  })

  it("reads an export (qemu-nbd -f qcow2, guest view) byte for byte as qemu-img convert -O raw", async () => {
    const socket = await serve("top.sock", ["-r", "-x", "top", "-f", "qcow2"], tmp.path("top.qcow2"))
    const expected = qemuRaw(tmp.path("top.qcow2"), tmp.path("top.raw"))
    for (const name of [`nbd:unix:${socket}:exportname=top`, `nbd+unix:///top?socket=${socket}`]) {
      await using img = await open(name, { readOnly: true })
      expect(img.format).toBe("raw")
      expect(img.virtualSize).toBe(expected.length)
      expect(sameBytes(await img.read(0, img.virtualSize), expected)).toBe(true)
    }
  })

  it("opens a qcow2 image served as bytes (qemu-nbd -f raw) with the qcow2 driver", async () => {
    const socket = await serve("base.sock", ["-r", "-f", "raw"], tmp.path("base.qcow2"))
    const expected = qemuRaw(tmp.path("base.qcow2"), tmp.path("base.raw"))
    await using img = await open(`nbd+unix:///?socket=${socket}`, { readOnly: true })
    expect(img.format).toBe("qcow2")
    expect(sameBytes(await img.read(0, img.virtualSize), expected)).toBe(true)
  })

  it("writes into a raw export read-write by default: data and write-zeroes land in the served file", async () => {
    qemuImg("create", "-q", "-f", "raw", tmp.path("served.raw"), "4M")
    qemuIo("-f", "raw", "-c", "write -P 0x33 0 4M", tmp.path("served.raw"))
    const socket = await serve("served.sock", ["-f", "raw"], tmp.path("served.raw"))
    {
      await using img = await open(`nbd:unix:${socket}`)
      expect(img.readOnly).toBe(false)
      await img.write(1 << 20, new Uint8Array(65536).fill(0x5a))
      await img.writeZeroes(2 << 20, 1 << 20)
      await img.flush()
    }
    const bytes = readFileSync(tmp.path("served.raw"))
    expect(bytes.subarray(1 << 20, (1 << 20) + 65536).every((b) => b === 0x5a)).toBe(true)
    expect(bytes.subarray(2 << 20, 3 << 20).every((b) => b === 0)).toBe(true)
    expect(bytes.subarray(3 << 20).every((b) => b === 0x33)).toBe(true)
  })

  it("fails with an ImageError when nothing listens, and refuses an export as a convert target", async () => {
    const e = await open(`nbd:unix:${tmp.path("none.sock")}`).catch((x: unknown) => x)
    expect(e).toBeInstanceOf(ImageError)
    expect((e as Error).message).toContain("Failed to connect to")
    const t = await convert(tmp.path("base.qcow2"), `nbd:unix:${tmp.path("served.sock")}`).catch((x: unknown) => x)
    expect(t).toBeInstanceOf(ImageError)
    expect(t).toMatchObject({ reason: "InvalidArgument" })
    expect(readFileSync(tmp.path("served.raw")).subarray(3 << 20).every((b) => b === 0x33)).toBe(true)
  })
})
