/**
 * `qcow2 serve` against real NBD clients only, on loopback: qemu-img and
 * qemu-io (QEMU's NBD client), nbdinfo and nbdcopy (libnbd). Every server
 * listens on a port the kernel picks (-p 0, printed with --verbose) and is
 * stopped by the test; images are made by qemu-img and checked by it after
 * the server has closed them.
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

interface Server {
  readonly uri: string
  readonly stop: (signal?: NodeJS.Signals) => Promise<{ readonly code: number | null; readonly stderr: string }>
  readonly ended: Promise<{ readonly code: number | null; readonly stderr: string }>
}

const hasTool = (tool: string): boolean => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0

/** Starts `qcow2 serve --verbose -p 0 -b 127.0.0.1 …` and waits for the URI it prints. */
const serve = (cwd: string, args: ReadonlyArray<string>): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BUNDLE, "serve", "--verbose", "-p", "0", "-b", "127.0.0.1", ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] })
    let stderr = ""
    const timer = setTimeout(() => child.kill("SIGKILL"), 50_000)
    const ended = new Promise<{ code: number | null; stderr: string }>((done) =>
      child.on("close", (code) => {
        clearTimeout(timer)
        done({ code, stderr })
      })
    )
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString()
      const m = /on (nbd:\/\/\S+)/.exec(stderr)
      if (m !== null) resolve({ uri: m[1]!, ended, stop: (signal = "SIGTERM") => (child.kill(signal), ended) })
    })
    void ended.then((e) => reject(new Error(`serve ended early (${e.code}): ${e.stderr}`)))
  })

let dir: string
const NBDINFO = hasTool("nbdinfo")
const NBDCOPY = hasTool("nbdcopy")

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-serve-")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** A 64 MiB qcow2 image with data at 1 MiB, a zero cluster at 4 MiB and data near the end. */
const sample = (name: string): string => {
  const file = path.join(dir, name)
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0xaa 1M 64k", "-c", "write -z 4M 1M", "-c", "write -P 0x3c 60M 200k", file])
  return file
}

describe("qcow2 serve with QEMU's NBD client", () => {
  it("qemu-img convert of the export equals the image; map over NBD matches qemu-nbd's", async () => {
    const file = sample("read.qcow2")
    const server = await serve(dir, ["-t", "-x", "disk", file])
    try {
      qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri, "from-nbd.raw"])
      expect(qemu(dir, "qemu-img", ["compare", "-U", "-f", "raw", "-F", "qcow2", "from-nbd.raw", file]).stdout).toBe("Images are identical.\n")
      const map = qemu(dir, "qemu-img", ["map", "--output=json", "-f", "raw", server.uri]).stdout
      expect(JSON.parse(map)).toEqual([
        { start: 0, length: 1048576, depth: 0, present: true, zero: true, data: false, offset: 0 },
        { start: 1048576, length: 65536, depth: 0, present: true, zero: false, data: true, offset: 1048576 },
        { start: 1114112, length: 61800448, depth: 0, present: true, zero: true, data: false, offset: 1114112 },
        { start: 62914560, length: 262144, depth: 0, present: true, zero: false, data: true, offset: 62914560 },
        { start: 63176704, length: 3932160, depth: 0, present: true, zero: true, data: false, offset: 63176704 }
      ])
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
  })

  it("qemu-io writes through the server land in the image, which passes qemu-img check; the server exits 0 when the client leaves", async () => {
    const file = sample("write.qcow2")
    const server = await serve(dir, [file])
    const io = qemu(dir, "qemu-io", [
      "-f", "raw",
      "-c", "write -P 0x5c 0 128k",
      "-c", "write -P 0x11 100000 3000",
      "-c", "write -z 2M 1M",
      "-c", "write -z -u 1M 64k",
      "-c", "discard 60M 64k",
      "-c", "write -P 7 63M 1M",
      "-c", "read -P 0x11 100000 3000",
      "-c", "flush",
      server.uri
    ])
    expect(io.stdout).not.toContain("failed")
    // Without -t the server ends once its only client has gone, as qemu-nbd does.
    const ended = await server.ended
    expect(ended.code).toBe(0)
    expect(qemu(dir, "qemu-img", ["check", file]).stdout).toContain("No errors were found on the image.")
    const check = qemu(dir, "qemu-io", [
      "-c", "read -P 0x5c 0 100000",
      "-c", "read -P 0x11 100000 3000",
      "-c", "read -P 0x5c 103000 28072",
      "-c", "read -P 0 1M 64k",
      "-c", "read -P 0 2M 1M",
      "-c", "read -P 0 60M 64k",
      "-c", "read -P 0x3c 62980096 136k",
      "-c", "read -P 7 63M 1M",
      file
    ]).stdout
    expect(check).not.toContain("fail")
    expect(check.match(/^read /gm)?.length).toBe(8)
  })

  it("out-of-range requests fail as they fail against qemu-nbd and leave the server serving", async () => {
    const file = sample("range.qcow2")
    const server = await serve(dir, ["-t", file])
    try {
      const io = qemu(dir, "qemu-io", ["-f", "raw", "-c", "read 64M 512", "-c", "write 63M 2M", "-c", "read -P 0xaa 1M 64k", server.uri], true)
      expect(io.stdout).toBe(
        "read failed: Input/output error\nwrite failed: Input/output error\nread 65536/65536 bytes at offset 1048576\n" +
          io.stdout.split("\n")[3] + "\n"
      )
      expect(qemu(dir, "qemu-img", ["info", "-f", "raw", "--output=json", server.uri]).stdout).toContain('"virtual-size": 67108864')
    } finally {
      expect((await server.stop("SIGINT")).code).toBe(0)
    }
    expect(qemu(dir, "qemu-img", ["compare", "-f", "qcow2", file, sample("range-ref.qcow2")]).status).toBe(0)
  })

  it("-r exports read-only: QEMU refuses to open it for writing, reads work, nothing changes", async () => {
    const file = sample("ro.qcow2")
    const before = fs.readFileSync(file)
    const server = await serve(dir, ["-r", "-t", file])
    try {
      const io = qemu(dir, "qemu-io", ["-f", "raw", "-c", "write 0 4k", server.uri], true)
      expect(io.status).toBe(1)
      expect(io.stderr).toBe(`qemu-io: can't open device ${server.uri}: Could not open image: Permission denied\n`)
      expect(qemu(dir, "qemu-io", ["-r", "-f", "raw", "-c", "read -P 0xaa 1M 64k", server.uri]).stdout).toContain("read 65536/65536")
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
    expect(fs.readFileSync(file).equals(before)).toBe(true)
  })

  it("concurrent writes from several connections (-e 4) all land", async () => {
    const file = sample("multi.qcow2")
    const server = await serve(dir, ["-t", "-e", "4", file])
    try {
      const runs = [0, 1, 2, 3].map(
        (i) =>
          new Promise<number>((resolve) => {
            const child = spawn("qemu-io", ["-f", "raw", "-c", `write -P ${i + 1} ${i * 8}M 8M`, "-c", `aio_write -P ${i + 0x41} ${32 + i}M 512k`, "-c", "aio_flush", server.uri])
            child.on("close", (code) => resolve(code ?? -1))
          })
      )
      expect(await Promise.all(runs)).toEqual([0, 0, 0, 0])
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
    expect(qemu(dir, "qemu-img", ["check", file]).status).toBe(0)
    const reads = [0, 1, 2, 3].flatMap((i) => ["-c", `read -P ${i + 1} ${i * 8}M 8M`, "-c", `read -P ${i + 0x41} ${32 + i}M 512k`])
    expect(qemu(dir, "qemu-io", [...reads, file]).stdout).not.toContain("fail")
  })
})

describe.runIf(NBDINFO)("qcow2 serve with libnbd's tools", () => {
  it("nbdinfo sees the export, its flags, block sizes and meta contexts; --map reflects allocation", async () => {
    const file = sample("info.qcow2")
    const server = await serve(dir, ["-t", "-A", "-x", "disk", "-D", "a test disk", file])
    try {
      const info = JSON.parse(spawnSync("nbdinfo", ["--json", server.uri], { encoding: "utf8" }).stdout)
      const e = info.exports[0]
      expect(info.protocol).toBe("newstyle-fixed")
      expect(info.structured).toBe(true)
      expect(e).toMatchObject({
        "export-name": "disk",
        description: "a test disk",
        contexts: ["base:allocation", "qemu:allocation-depth"],
        is_read_only: false,
        can_flush: true,
        can_fua: true,
        can_trim: true,
        can_zero: true,
        can_fast_zero: true,
        can_df: true,
        can_cache: true,
        can_multi_conn: false,
        block_size_minimum: 1,
        block_size_preferred: 4096,
        block_size_maximum: 33554432,
        "export-size": 67108864
      })
      const list = spawnSync("nbdinfo", ["--list", "--json", server.uri], { encoding: "utf8" })
      expect(JSON.parse(list.stdout).exports.map((x: { "export-name": string }) => x["export-name"])).toEqual(["disk"])
      const map = spawnSync("nbdinfo", ["--map", server.uri], { encoding: "utf8" }).stdout
      expect(map.split("\n").map((l) => l.trim().split(/\s+/).join(" "))).toEqual([
        "0 1048576 3 hole,zero",
        "1048576 65536 0 data",
        "1114112 61800448 3 hole,zero",
        "62914560 262144 0 data",
        "63176704 3932160 3 hole,zero",
        ""
      ])
      const depth = spawnSync("nbdinfo", ["--map=qemu:allocation-depth", server.uri], { encoding: "utf8" }).stdout
      expect(depth).toMatch(/^\s+4194304\s+1048576\s+1\s+local$/m)
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
  })

  it("on a backing chain, nbdinfo --map of base:allocation and qemu:allocation-depth is what it is against qemu-nbd -A", async () => {
    const base = sample("chain-base.qcow2")
    const top = path.join(dir, "chain-top.qcow2")
    qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    qemu(dir, "qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -z 1M 64k", "-c", "write -P 2 20M 128k", top])
    const ours = await serve(dir, ["-t", "-r", "-A", top])
    const port = 20000 + Math.floor(Math.random() * 20000)
    const theirs = spawn("qemu-nbd", ["-t", "-r", "-A", "-b", "127.0.0.1", "-p", String(port), "-f", "qcow2", top], { stdio: "ignore" })
    try {
      const qemuUri = `nbd://127.0.0.1:${port}/`
      for (let i = 0; i < 100 && spawnSync("nbdinfo", ["--size", qemuUri]).status !== 0; i++) await new Promise((r) => setTimeout(r, 50))
      for (const context of ["base:allocation", "qemu:allocation-depth"]) {
        const map = (uri: string) => spawnSync("nbdinfo", [`--map=${context}`, uri], { encoding: "utf8" }).stdout
        const expected = map(qemuUri)
        expect(expected).not.toBe("")
        expect({ context, map: map(ours.uri) }).toEqual({ context, map: expected })
      }
    } finally {
      theirs.kill("SIGTERM")
      expect((await ours.stop()).code).toBe(0)
    }
  })

  it("an encrypted image (--object secret) reads as qemu-img reads it", async () => {
    const file = path.join(dir, "secret.qcow2")
    const secret = ["--object", "secret,id=sec0,data=hunter2"]
    qemu(dir, "qemu-img", ["create", "-q", ...secret, "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", file, "8M"])
    qemu(dir, "qemu-io", [...secret, "--image-opts", "-c", "write -P 0x42 1M 256k", `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`])
    const server = await serve(dir, ["-t", ...secret, file])
    try {
      qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri, "secret-nbd.raw"])
      qemu(dir, "qemu-img", ["convert", "-U", ...secret, "--image-opts", "-O", "raw", `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`, "secret-qemu.raw"])
      expect(fs.readFileSync(path.join(dir, "secret-nbd.raw")).equals(fs.readFileSync(path.join(dir, "secret-qemu.raw")))).toBe(true)
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
  })

  it("a raw image: nbdinfo --map covers it in bounded requests as qemu-nbd maps it, qemu-img convert of the export equals it", async () => {
    const file = path.join(dir, "plain.raw")
    qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", file, "100M"])
    qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 0x21 3M 1M", "-c", "write -P 0x22 90M 8k", file])
    const server = await serve(dir, ["-t", "-f", "raw", file])
    try {
      const map = spawnSync("nbdinfo", ["--map", "--totals", server.uri], { encoding: "utf8" }).stdout
      // As qemu-nbd answers (SEEK_DATA): the first 4 KiB, which qemu-img create writes, is data too.
      const data = 4096 + 1048576 + 8192
      expect(map.split("\n").filter((l) => l.trim() !== "").map((l) => l.trim().split(/\s+/).slice(0, 2).join(" "))).toEqual([
        `${data} 1.0%`,
        `${100 * 1048576 - data} 99.0%`
      ])
      qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri, "plain-copy.raw"])
      expect(fs.readFileSync(path.join(dir, "plain-copy.raw")).equals(fs.readFileSync(file))).toBe(true)
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
  })

  it.runIf(NBDCOPY)("nbdcopy copies the export out and a raw file in; the image then holds it and passes qemu-img check", async () => {
    const file = sample("copy.qcow2")
    const server = await serve(dir, ["-t", "-e", "0", file])
    try {
      expect(spawnSync("nbdcopy", [server.uri, path.join(dir, "copied.raw")]).status).toBe(0)
      expect(qemu(dir, "qemu-img", ["compare", "-U", "-f", "raw", "-F", "qcow2", "copied.raw", file]).status).toBe(0)
      const input = path.join(dir, "input.raw")
      qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", input, "64M"])
      qemu(dir, "qemu-io", ["-f", "raw", "-c", "write -P 0x77 3M 5M", "-c", "write -P 0x12 40M 64k", input])
      expect(spawnSync("nbdcopy", ["--flush", input, server.uri]).status).toBe(0)
    } finally {
      expect((await server.stop()).code).toBe(0)
    }
    expect(qemu(dir, "qemu-img", ["check", file]).status).toBe(0)
    expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", "qcow2", path.join(dir, "input.raw"), file]).stdout).toBe("Images are identical.\n")
  })
})

describe("qcow2 serve command line", () => {
  it("reports mistakes as qemu-nbd does, exit 1", () => {
    const file = sample("cli.qcow2")
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["-e", "x", file], "qcow2: Invalid shared device number 'x'\n"],
      [["-k", "rel.sock", file], "qcow2: socket path must be absolute\n"],
      [["--cache=bogus", file], "qcow2: Invalid cache mode `bogus'\n"],
      [["-f", "bogus", file], `qcow2: Failed to blk_new_open '${file}': Unknown driver 'bogus'\n`],
      [["-p", "abc", "-b", "127.0.0.1", file], "qcow2: address resolution failed for 127.0.0.1:abc: Servname not supported for ai_socktype\n"],
    ]
    for (const [args, message] of cases) {
      const r = qcow2(dir, ["serve", ...args])
      expect({ args, status: r.status, stderr: r.stderr }).toEqual({ args, status: 1, stderr: message })
    }
    // The open failure itself is worded as `qcow2 info` words it.
    const missing = qcow2(dir, ["serve", "nope.qcow2"])
    expect(missing.status).toBe(1)
    expect(missing.stderr).toMatch(/^qcow2: Failed to blk_new_open 'nope.qcow2': Could not open 'nope.qcow2': .*\n$/)
  })

  it("a port already in use is refused with qemu-nbd's message", async () => {
    const file = sample("busy.qcow2")
    const server = await serve(dir, ["-t", file])
    try {
      const port = new URL(server.uri).port
      // Another image: the served one is locked, as qemu-nbd locks it.
      const r = qcow2(dir, ["serve", "-p", port, "-b", "127.0.0.1", sample("busy-2.qcow2")])
      expect(r.status).toBe(1)
      expect(r.stderr).toBe("qcow2: Failed to bind socket: Address already in use\n")
    } finally {
      await server.stop()
    }
  })

  it("serves on a Unix socket (-k) and removes it at exit", async () => {
    const file = sample("unix.qcow2")
    const socket = path.join(dir, "nbd.sock")
    const child = spawn(process.execPath, [BUNDLE, "serve", "-t", "-k", socket, file], { stdio: "ignore" })
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50))
      const uri = `nbd+unix:///?socket=${socket}`
      qemu(dir, "qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, "unix.raw"])
      expect(qemu(dir, "qemu-img", ["compare", "-U", "-f", "raw", "-F", "qcow2", "unix.raw", file]).status).toBe(0)
    } finally {
      const code = await new Promise<number | null>((resolve) => {
        child.on("close", resolve)
        child.kill("SIGTERM")
      })
      expect(code).toBe(0)
    }
    expect(fs.existsSync(socket)).toBe(false)
  })
})
