/**
 * The NBD client against real servers: QEMU's qemu-nbd (reads byte for
 * byte as `qemu-img convert -O raw` reads the image, block status as
 * `qemu-img map` shows it through NBD, with `base:allocation` and with
 * QEMU's x-dirty-bitmap=qemu:allocation-depth, writes that qemu-img
 * compare finds equal to qemu-io's) and this package's own server.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Layer, type Scope } from "effect"
import type { ClusterCodec } from "@qcow2/compress"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { mapImage, openImage } from "@qcow2/image"
import { StorageOpener } from "@qcow2/storage"
import { NodeStorageOpener } from "@qcow2/storage-node"
import { nbdNameOf, type NbdTarget } from "../src/client/index.js"
import { listen, makeNbdStorageOpener, openNbd } from "../src/node.js"

let dir: string
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-nbdc-"))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const sh = (tool: string, args: ReadonlyArray<string>): string => {
  const r = spawnSync(tool, args, { encoding: "utf8" })
  if (r.status !== 0) throw new Error(`${tool} ${args.join(" ")}: ${r.stderr}`)
  return r.stdout
}

/** True once something accepts connections on the socket. */
const accepting = (socket: string): Promise<boolean> =>
  new Promise((resolve) => {
    const c = net.createConnection({ path: socket })
    c.once("connect", () => {
      c.destroy()
      resolve(true)
    })
    c.once("error", () => resolve(false))
  })

/** Starts qemu-nbd on a Unix socket (persistent) and waits until it accepts clients. */
const qemuNbd = async (args: ReadonlyArray<string>): Promise<{ socket: string; stop: () => Promise<void> }> => {
  const socket = path.join(dir, `q${Math.random().toString(36).slice(2)}.sock`)
  const child: ChildProcess = spawn("qemu-nbd", ["-k", socket, "-t", ...args], { stdio: "ignore" })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  for (let i = 0; i < 500 && !(await accepting(socket)); i++) await new Promise((r) => setTimeout(r, 10))
  return {
    socket,
    stop: async () => {
      child.kill("SIGTERM")
      await exited
    }
  }
}

const unix = (socket: string, extra: Partial<NbdTarget> = {}): NbdTarget => ({ server: { type: "unix", path: socket }, exportName: "", ...extra })
const env = Layer.mergeAll(Layer.succeed(StorageOpener, makeNbdStorageOpener()), NodeClusterCodec.layer)
const run = <A, E>(effect: Effect.Effect<A, E, StorageOpener | ClusterCodec | Scope.Scope>) => Effect.runPromise(Effect.scoped(effect).pipe(Effect.provide(env)))

/** A 4 MiB qcow2 over a backing file: data in the backing (0-2M), in the top (1M-3M), a zero cluster, unallocated space. */
const layeredImage = (name: string): string => {
  const base = path.join(dir, `${name}.base.qcow2`)
  const top = path.join(dir, `${name}.qcow2`)
  sh("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
  sh("qemu-io", ["-c", "write -P 0x11 0 2M", base])
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "4M"])
  sh("qemu-io", ["-c", "write -P 0x22 1M 2M", "-c", "write -z 3584k 64k", "-c", "write -P 0x33 3700k 3", top])
  return top
}

describe("against qemu-nbd", () => {
  it("reads the export byte for byte as qemu-img convert -O raw reads the image, at any offset and length", async () => {
    const image = layeredImage("read")
    const raw = path.join(dir, "read.raw")
    sh("qemu-img", ["convert", "-O", "raw", image, raw])
    const expected = new Uint8Array(fs.readFileSync(raw))
    const server = await qemuNbd(["-r", "-f", "qcow2", image])
    try {
      const windows: Array<[number, number]> = [[0, expected.length], [1, 7], [1048575, 3], [3700 * 1024 - 5, 70000], [4 * 2 ** 20 - 1, 1]]
      const reads = await run(
        Effect.gen(function* () {
          const storage = yield* openNbd(unix(server.socket), { readOnly: true })
          expect(yield* storage.size()).toBe(expected.length)
          const out: Uint8Array[] = []
          for (const [offset, length] of windows) {
            const into = new Uint8Array(length)
            yield* storage.read(offset, into)
            out.push(into)
          }
          // Past the end reads as zeros (the BlockStorage contract), without asking the server.
          const tail = new Uint8Array(16).fill(9)
          yield* storage.read(expected.length - 8, tail)
          out.push(tail)
          return out
        })
      )
      windows.forEach(([offset, length], i) => expect(Buffer.compare(reads[i]!, expected.subarray(offset, offset + length))).toBe(0))
      expect([...reads[windows.length]!]).toEqual([...expected.subarray(expected.length - 8), ...new Array(8).fill(0)])
    } finally {
      await server.stop()
    }
  })

  it("maps the export as qemu-img map does through NBD: base:allocation, and qemu:allocation-depth via x-dirty-bitmap", async () => {
    const image = layeredImage("map")
    const server = await qemuNbd(["-r", "-A", "-f", "qcow2", image])
    try {
      for (const context of [undefined, "qemu:allocation-depth"]) {
        const target = unix(server.socket, context !== undefined ? { statusContext: context } : {})
        const optionString = `driver=nbd,server.type=unix,server.path=${server.socket}${context !== undefined ? `,x-dirty-bitmap=${context}` : ""}`
        const expected = JSON.parse(sh("qemu-img", ["map", "--output=json", "--image-opts", optionString]))
        const entries = await run(
          Effect.gen(function* () {
            const opened = yield* openImage(nbdNameOf(target), { format: "raw", readOnly: true })
            return yield* mapImage(opened, "nbd")
          })
        )
        expect(entries.map(({ filename: _, ...e }) => e)).toEqual(expected)
      }
    } finally {
      await server.stop()
    }
  })

  it("probes the format through NBD as qemu-img does: a qcow2 file served raw opens as qcow2", async () => {
    const image = layeredImage("probe")
    const raw = path.join(dir, "probe.raw")
    sh("qemu-img", ["convert", "-O", "raw", image, raw])
    const flat = path.join(dir, "probe.flat.qcow2")
    sh("qemu-img", ["convert", "-O", "qcow2", image, flat])
    const server = await qemuNbd(["-r", "-f", "raw", flat])
    try {
      const { format, bytes } = await run(
        Effect.gen(function* () {
          const opened = yield* openImage(`nbd:unix:${server.socket}`, { readOnly: true })
          const bytes = new Uint8Array(opened.virtualSize)
          yield* opened.read(0, bytes)
          return { format: opened.format, bytes }
        })
      )
      expect(format).toBe("qcow2")
      expect(Buffer.compare(bytes, fs.readFileSync(raw))).toBe(0)
    } finally {
      await server.stop()
    }
  })

  it("writes, zeroes, trims and flushes as qemu-io does through NBD: qemu-img compare finds the two images identical", async () => {
    const ours = path.join(dir, "w-ours.qcow2")
    const theirs = path.join(dir, "w-theirs.qcow2")
    for (const file of [ours, theirs]) {
      sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "8M"])
      sh("qemu-io", ["-c", "write -P 0x44 0 8M", file])
    }
    const oursServer = await qemuNbd(["--discard=unmap", "-f", "qcow2", ours])
    const theirsServer = await qemuNbd(["--discard=unmap", "-f", "qcow2", theirs])
    try {
      await run(
        Effect.gen(function* () {
          const storage = yield* openNbd(unix(oursServer.socket), { readOnly: false })
          yield* storage.write(100, new Uint8Array(70000).fill(0x55))
          yield* storage.writeZeroes!(2 * 2 ** 20, 2 ** 20)
          yield* storage.discard(4 * 2 ** 20, 2 ** 20)
          yield* storage.write(8 * 2 ** 20 - 3, new Uint8Array(3).fill(7))
          yield* storage.flush()
        })
      )
      // The same requests from QEMU's own NBD client.
      sh("qemu-io", ["-f", "raw", "-c", "write -P 0x55 100 70000", "-c", "write -z 2M 1M", "-c", "discard 4M 1M", "-c", "write -P 7 8388605 3", "-c", "flush", `nbd:unix:${theirsServer.socket}`])
    } finally {
      await oursServer.stop()
      await theirsServer.stop()
    }
    expect(sh("qemu-img", ["compare", ours, theirs])).toContain("Images are identical.")
    expect(sh("qemu-img", ["map", "--output=json", ours])).toBe(sh("qemu-img", ["map", "--output=json", theirs]))
    expect(sh("qemu-img", ["check", ours])).toContain("No errors were found on the image.")
  })
})

describe("against this package's server", () => {
  it("reads what qemu-io wrote and writes what qemu-img then reads, over TCP", async () => {
    const file = path.join(dir, "own.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "2M"])
    sh("qemu-io", ["-c", "write -P 0x66 0 64k", file])
    const fileEnv = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer)
    const { before, status } = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const image = yield* openImage(file)
          const server = yield* listen({ exports: [{ name: "own", image }], multiConn: false }, { host: "127.0.0.1", port: 0 })
          const port = "port" in server.address ? server.address.port : 0
          return yield* Effect.scoped(
            Effect.gen(function* () {
              const storage = yield* openNbd({ server: { type: "inet", host: "127.0.0.1", port }, exportName: "own" }, { readOnly: false })
              const before = new Uint8Array(4)
              yield* storage.read(65534, before)
              yield* storage.write(65536, new Uint8Array(4096).fill(0x77))
              yield* storage.flush()
              const status = [yield* storage.blockStatus!(0, 2 ** 21), yield* storage.blockStatus!(131072, 2 ** 21 - 131072)]
              return { before, status }
            })
          )
        })
      ).pipe(Effect.provide(fileEnv))
    )
    expect([...before]).toEqual([0x66, 0x66, 0, 0])
    // The server reports whole clusters (64 KiB): two allocated, the rest a hole reading as zeros.
    expect(status).toEqual([{ length: 131072, data: true, zero: false }, { length: 2 ** 21 - 131072, data: false, zero: true }])
    expect(sh("qemu-io", ["-c", "read -P 0x77 64k 4k", "-c", "read -P 0x66 0 64k", file])).not.toContain("fail")
    expect(sh("qemu-img", ["check", file])).toContain("No errors were found on the image.")
  })
})
