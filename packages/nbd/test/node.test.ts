/**
 * The node:net edge in-process, against QEMU's NBD client: the README's
 * program shape (open an image, listen, wait for `done`), qemu-nbd's
 * connection policy (one client at a time by default, the next one waits;
 * done after the last negotiated client), and interruption: requests in
 * flight finish, the image closes clean.
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Fiber, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { openImage } from "@qcow2/image"
import { NodeStorageOpener } from "@qcow2/storage-node"
import { listen, type NbdListener } from "../src/node.js"

const layer = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer)
let dir: string

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-nbd-"))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const sh = (tool: string, args: ReadonlyArray<string>) => {
  const r = spawnSync(tool, args, { encoding: "utf8" })
  if (r.status !== 0) throw new Error(`${tool} ${args.join(" ")}: ${r.stderr}`)
  return r.stdout
}

/** qemu-io as a child process (so the server keeps running in this one). */
const qemuIo = (args: ReadonlyArray<string>): Promise<{ code: number | null; stdout: string }> =>
  new Promise((resolve) => {
    const child = spawn("qemu-io", args)
    let stdout = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.on("close", (code) => resolve({ code, stdout }))
  })

const uri = (l: NbdListener, name: string) => ("port" in l.address ? `nbd://127.0.0.1:${l.address.port}/${name}` : "")

describe("listen", () => {
  it("serves a qcow2 image to qemu-io until the client leaves; the image passes qemu-img check", async () => {
    const file = path.join(dir, "disk.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "16M"])
    const program = Effect.scoped(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        const server = yield* listen({ exports: [{ name: "disk", image }], multiConn: false }, { host: "127.0.0.1", port: 0 })
        const client = qemuIo(["-f", "raw", "-c", "write -P 0x61 1M 3M", "-c", "aio_write -P 0x62 8M 64k", "-c", "aio_flush", uri(server, "disk")])
        yield* server.done
        return yield* Effect.promise(() => client)
      })
    )
    const io = await Effect.runPromise(program.pipe(Effect.provide(layer)))
    expect(io.code).toBe(0)
    expect(sh("qemu-img", ["check", file])).toContain("No errors were found on the image.")
    expect(sh("qemu-io", ["-c", "read -P 0x61 1M 3M", "-c", "read -P 0x62 8M 64k", "-c", "read -P 0 4M 4M", file])).not.toContain("fail")
  })

  it("serves one client at a time by default: the second waits for the first", async () => {
    const file = path.join(dir, "one.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "16M"])
    const program = Effect.scoped(
      Effect.gen(function* () {
        const image = yield* openImage(file)
        const server = yield* listen({ exports: [{ name: "", image }], multiConn: false }, { host: "127.0.0.1", port: 0, persistent: true })
        const clients = [1, 2, 3].map((i) => qemuIo(["-f", "raw", "-c", `write -P ${i} ${i}M 1M`, uri(server, "")]))
        return yield* Effect.promise(() => Promise.all(clients))
      })
    )
    const results = await Effect.runPromise(program.pipe(Effect.provide(layer)))
    expect(results.map((r) => r.code)).toEqual([0, 0, 0])
    expect(sh("qemu-io", ["-c", "read -P 1 1M 1M", "-c", "read -P 2 2M 1M", "-c", "read -P 3 3M 1M", file])).not.toContain("fail")
  })

  it("interrupted while a client writes: the writes in flight finish, the image is flushed and passes qemu-img check", async () => {
    const file = path.join(dir, "stop.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"])
    const fiber = Effect.runFork(
      Effect.scoped(
        Effect.gen(function* () {
          const image = yield* openImage(file)
          const server = yield* listen({ exports: [{ name: "", image }], multiConn: false }, { host: "127.0.0.1", port: 0, persistent: true })
          yield* Effect.sync(() => void qemuIo(["-f", "raw", "-c", "write -P 9 0 48M", uri(server, "")]))
          return yield* Effect.never
        })
      ).pipe(Effect.provide(layer))
    )
    await new Promise((r) => setTimeout(r, 400))
    await Effect.runPromise(Fiber.interrupt(fiber))
    expect(sh("qemu-img", ["check", file])).toContain("No errors were found on the image.")
  })

  it("reports an address in use as a typed error", async () => {
    const file = path.join(dir, "busy.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "1M"])
    const program = Effect.scoped(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true })
        const first = yield* listen({ exports: [{ name: "", image }], multiConn: false }, { host: "127.0.0.1", port: 0 })
        const port = "port" in first.address ? first.address.port : 0
        return yield* Effect.flip(listen({ exports: [{ name: "", image }], multiConn: false }, { host: "127.0.0.1", port }))
      })
    )
    const error = await Effect.runPromise(program.pipe(Effect.provide(layer)))
    expect(error).toMatchObject({ _tag: "NbdListenError", reason: "AddressInUse", message: "Failed to bind socket: Address already in use" })
  })
})
