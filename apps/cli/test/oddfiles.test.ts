/**
 * Files that are not plain images, and a host that misbehaves, against
 * qemu-img / qemu-io:
 * - FIFOs and directories are refused at once with QEMU's message (a FIFO
 *   without a writer used to block every command, deaf to SIGTERM), and a
 *   character device opens like QEMU's host_device (/dev/null: empty raw);
 * - a raw source that grows during convert is copied at the size it had
 *   when it was opened;
 * - a full disk, a quota or a file size limit shows qemu-io's text
 *   ("No space left on device", "File too large"), not "Input/output error";
 * - a working directory deeper than PATH_MAX works, as it does for qemu-img.
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

/**
 * Runs a shell script (bash -c: dash cannot cd past PATH_MAX), e.g. to set
 * limits or reach a directory by relative steps.
 */
const sh = (script: string, cwd: string) => {
  const r = spawnSync("bash", ["-c", script], { cwd, encoding: "utf8", timeout: 30_000 })
  return { status: r.status ?? -1, signal: r.signal, stdout: r.stdout, stderr: r.stderr }
}

const quote = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`
const CLI = `${quote(process.execPath)} ${quote(BUNDLE)}`

describe("odd files", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-oddfiles-")
    execMkfifo(path.join(dir, "fifo"))
    fs.mkdirSync(path.join(dir, "sub"))
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "a.qcow2", "1M"])
  })

  const execMkfifo = (p: string) => {
    const r = spawnSync("mkfifo", [p])
    if (r.status !== 0) throw new Error(`mkfifo ${p} failed`)
  }

  const refused = (name: string) => `Could not open '${name}': 'file' driver requires '${name}' to be a regular file`

  it("a FIFO without a writer is refused at once by every command, with QEMU's message", () => {
    const commands: Array<[string[], number]> = [
      [["info", "fifo"], 1],
      [["info", "--output=json", "fifo"], 1],
      [["check", "fifo"], 1],
      [["map", "fifo"], 1],
      [["convert", "-O", "raw", "fifo", "out.raw"], 1],
      [["compare", "fifo", "a.qcow2"], 2],
      [["io", "-r", "-c", "read 0 512", "fifo"], 1],
      [["io", "-c", "read 0 512", "fifo"], 1]
    ]
    for (const [args, status] of commands) {
      const r = qcow2(dir, args, 20_000)
      expect(r.status, `${args.join(" ")}: ${r.stderr}`).toBe(status)
      // qemu-io words it "can't open device fifo: 'file' driver requires …" (checked below).
      if (args[0] !== "io") expect(r.stderr).toBe(`qcow2: ${refused("fifo")}\n`)
      else expect(r.stderr).toBe(`qcow2: can't open device fifo: ${refused("fifo").replace("Could not open 'fifo': ", "")}\n`)
    }
    // qemu-io opens read-write (which does not wait for a writer) and says the same.
    expect(qemu(dir, "qemu-io", ["-c", "read 0 512", "fifo"], true).stderr).toBe(
      `qemu-io: can't open device fifo: ${refused("fifo").replace("Could not open 'fifo': ", "")}\n`
    )
  })

  it("a FIFO fed a qcow2 is refused, not read as an empty raw image", () => {
    const fifo = path.join(dir, "fed")
    execMkfifo(fifo)
    // A writer that holds the FIFO open with a qcow2 header in it (O_RDWR does not wait for a reader).
    const fd = fs.openSync(fifo, fs.constants.O_RDWR)
    try {
      fs.writeSync(fd, fs.readFileSync(path.join(dir, "a.qcow2")).subarray(0, 512))
      const r = qcow2(dir, ["info", "fed"], 20_000)
      expect(r.status).toBe(1)
      expect(r.stderr).toBe(`qcow2: ${refused("fed")}\n`)
    } finally {
      fs.closeSync(fd)
    }
  })

  it("a directory is refused as qemu-img refuses it", () => {
    for (const args of [["info", "sub"], ["check", "sub"], ["map", "sub"]]) {
      const ours = qcow2(dir, args)
      const theirs = qemu(dir, "qemu-img", args, true)
      expect(ours.status).toBe(1)
      expect(ours.stderr).toBe(theirs.stderr.replace(/^qemu-img: /, "qcow2: "))
    }
  })

  it("a socket is refused (open fails: no such device or address)", async () => {
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(path.join(dir, "sock"), resolve))
    try {
      const r = qcow2(dir, ["info", "sock"], 20_000)
      expect(r.status).toBe(1)
      expect(r.stderr).toMatch(/^qcow2: Could not open 'sock': .*no such device or address/i)
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  it("a character device opens as QEMU's host_device does (/dev/null: empty raw)", () => {
    const ours = qcow2(dir, ["info", "/dev/null"], 20_000)
    const theirs = qemu(dir, "qemu-img", ["info", "/dev/null"])
    expect(ours.status).toBe(0)
    expect(ours.stdout).toBe(theirs.stdout)
  })

  it("convert into a FIFO fails instead of waiting for a reader", () => {
    qemu(dir, "qemu-img", ["create", "-f", "raw", "small.raw", "1M"])
    for (const format of ["raw", "qcow2"]) {
      const r = qcow2(dir, ["convert", "-O", format, "small.raw", "fifo"], 20_000)
      expect(r.status, r.stderr).toBe(1)
      expect(r.stderr).toMatch(/^qcow2: fifo: /)
    }
  })
})

describe("a raw source that grows during convert", () => {
  let dir: string
  const SIZE = 96 * 1024 * 1024 + 1000
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-grow-")
    const block = Buffer.alloc(1 << 20)
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i)
    const fd = fs.openSync(path.join(dir, "src.raw"), "w")
    for (let done = 0; done < SIZE; done += block.length) fs.writeSync(fd, block, 0, Math.min(block.length, SIZE - done))
    fs.closeSync(fd)
  })

  for (const format of ["raw", "qcow2"]) {
    it(`is copied at the size it had when opened (-O ${format})`, async () => {
      const source = path.join(dir, "src.raw")
      fs.truncateSync(source, SIZE)
      const target = path.join(dir, `out.${format}`)
      fs.rmSync(target, { force: true })
      const child = spawn(process.execPath, [BUNDLE, "convert", ...(format === "raw" ? ["-f", "raw"] : []), "-O", format, "src.raw", `out.${format}`], { cwd: dir, stdio: "ignore" })
      const ended = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
      // The sources are opened before the target is created.
      while (!fs.existsSync(target)) await new Promise((r) => setTimeout(r, 2))
      fs.appendFileSync(source, Buffer.alloc(8 << 20, 0x77))
      expect(await ended).toBe(0)
      fs.truncateSync(source, SIZE)
      if (format === "raw") {
        // The raw source's disk is its length rounded up to 512 (as qemu-img convert copies it).
        expect(fs.statSync(target).size).toBe(Math.ceil(SIZE / 512) * 512)
      } else {
        const info = JSON.parse(qemu(dir, "qemu-img", ["info", "--output=json", `out.${format}`]).stdout) as { "virtual-size": number }
        expect(info["virtual-size"]).toBe(Math.ceil(SIZE / 512) * 512)
      }
      expect(qemu(dir, "qemu-img", ["compare", "-f", "raw", "-F", format, "src.raw", `out.${format}`], true).stdout).toBe("Images are identical.\n")
    })
  }
})

describe("no space, quotas and file size limits", () => {
  let dir: string
  let small: string
  let mounted = false
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-nospace-")
    small = path.join(dir, "small")
    fs.mkdirSync(small)
    mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small]).status === 0
  })
  afterAll(() => {
    if (mounted) spawnSync("umount", [small])
  })

  it("a full disk during io write says 'No space left on device', as qemu-io does", (ctx) => {
    // Needs a small file system: a tmpfs mount (root); the errno mapping itself is unit-tested in storage-node.
    if (!mounted) ctx.skip()
    for (const [format, create] of [
      ["qcow2", ["create", "-f", "qcow2", "img", "64M"]],
      ["raw", ["create", "-f", "raw", "img", "64M"]]
    ] as const) {
      qemu(small, "qemu-img", [...create])
      const theirs = qemu(small, "qemu-io", ["-f", format, "-c", "write -P 1 0 4M", "img"], true)
      fs.rmSync(path.join(small, "img"))
      qemu(small, "qemu-img", [...create])
      const ours = qcow2(small, ["io", "-f", format, "-c", "write -P 1 0 4M", "img"])
      expect(theirs.stdout).toContain("write failed: No space left on device")
      expect(ours.stdout).toBe(theirs.stdout)
      expect(ours.status).toBe(theirs.status)
      if (format === "qcow2") {
        const check = qemu(small, "qemu-img", ["check", "img"], true)
        expect([0, 3]).toContain(check.status)
      }
      fs.rmSync(path.join(small, "img"))
    }
  })

  it("a file size limit (ulimit -f) during io write says 'File too large', as qemu-io does", () => {
    for (const format of ["qcow2", "raw"]) {
      qemu(dir, "qemu-img", ["create", "-f", format, `lim.${format}`, "64M"])
      // SIGXFSZ ignored: qemu-io would die of it; Node ignores it anyway. bash's ulimit -f counts KiB.
      const limited = (command: string) => sh(`trap '' XFSZ; ulimit -f 2048 && exec ${command}`, dir)
      const theirs = limited(`qemu-io -f ${format} -c 'write -P 1 0 4M' lim.${format}`)
      const ours = limited(`${CLI} io -f ${format} -c 'write -P 1 0 4M' lim.${format}`)
      expect(theirs.stdout).toContain("write failed: File too large")
      expect(ours.stdout).toBe(theirs.stdout)
      expect(ours.status).toBe(theirs.status)
    }
  })
})

describe("a working directory deeper than PATH_MAX", () => {
  let dir: string
  /** `cd` steps from `dir` to a directory whose absolute name is longer than PATH_MAX (4096). */
  let steps: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-deep-")
    const name = "d".repeat(200)
    steps = Array.from({ length: 25 }, () => `cd ${name}`).join(" && ")
    const r = sh(Array.from({ length: 25 }, () => `mkdir ${name} && cd ${name}`).join(" && ") + " && pwd | wc -c", dir)
    expect(r.status).toBe(0)
    expect(Number(r.stdout.trim())).toBeGreaterThan(4096)
  })
  afterAll(() => {
    spawnSync("rm", ["-rf", dir])
  })

  it("works there, relative names and backing files included, as qemu-img does", () => {
    const deep = (command: string) => sh(`${steps} && ${command}`, dir)
    expect(deep(`qemu-img create -f qcow2 base.qcow2 1M >/dev/null && qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null`).status).toBe(0)
    for (const args of [
      "info top.qcow2",
      "info --backing-chain top.qcow2",
      "map top.qcow2",
      "check top.qcow2",
      "create -f qcow2 new.qcow2 1M",
      "io -c 'write -P 7 0 4k' top.qcow2",
      "convert -O raw top.qcow2 top.raw",
      "compare top.qcow2 top.raw"
    ]) {
      const r = deep(`${CLI} ${args}`)
      expect(r.status, `${args}: ${r.stderr}`).toBe(0)
      expect(r.stderr).toBe("")
    }
    expect(deep(`qemu-io -r -c 'read -P 7 0 4k' top.raw`).stdout).not.toMatch(/verification failed/)
    expect(deep(`qemu-img check new.qcow2`).status).toBe(0)
  })
})
