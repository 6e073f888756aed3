/**
 * qemu-io as a drop-in: the same commands given to real qemu-io 7.2 and to
 * this CLI run as `qemu-io` (dist/bin/qemu-io.cjs), on copies of one image
 * qemu-img made, must print the same bytes on stdout and stderr (timings
 * masked) and exit alike: -c sequences, commands on standard input, the
 * program's own options, help texts, errors. Also: output is written as
 * each command completes (a killed run keeps it), the program-name prefix,
 * and sigraise/abort ending the process by their signal.
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, qemu } from "./helpers.js"

const QEMU_IO_BIN = path.join(path.dirname(BUNDLE), "qemu-io.cjs")
const QEMU_IMG_BIN = path.join(path.dirname(BUNDLE), "qemu-img.cjs")

let dir = ""
let counter = 0

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-qemu-io-")
  qemu(dir, "qemu-img", ["create", "-f", "qcow2", "base.qcow2", "1M"])
  qemu(dir, "qemu-io", ["-c", "write -P 7 64k 64k", "base.qcow2"])
}, 120_000)

afterAll(() => {
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

interface Result {
  readonly status: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

const run = (command: string, args: ReadonlyArray<string>, input?: string, argv0?: string): Result => {
  const r = spawnSync(command, args, { cwd: dir, encoding: "utf8", input: input ?? "", timeout: 60_000, ...(argv0 !== undefined ? { argv0 } : {}) })
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr }
}

/** A fresh copy of the base image; its name stands for IMG in the arguments. */
const freshCopy = (): string => {
  const name = `img${counter++}.qcow2`
  fs.copyFileSync(path.join(dir, "base.qcow2"), path.join(dir, name))
  return name
}

/** qemu-io's timings vary run to run (and aio_write -z prints an uninitialised one). */
const maskTimes = (s: string): string =>
  s.replace(/ops; [\d:.]+ (?:sec )?\([^)]*\)/g, "ops; T").replace(/^(\d+,\d+),[\d:.]+,[\d.]+,[\d.]+$/gm, "$1,CSV")

/** Runs `args` (IMG: a fresh image copy each) with real qemu-io and with ours; both results, times masked. */
const both = (args: ReadonlyArray<string>, input?: string) => {
  const real = (() => {
    const image = freshCopy()
    return run("qemu-io", args.map((a) => a.replaceAll("IMG", image)), input?.replaceAll("IMG", image))
  })()
  const ours = (() => {
    const image = freshCopy()
    return run(process.execPath, [QEMU_IO_BIN, ...args.map((a) => a.replaceAll("IMG", image))], input?.replaceAll("IMG", image))
  })()
  const mask = (r: Result, image: RegExp) => ({ status: r.status, stdout: maskTimes(r.stdout).replace(image, "IMG"), stderr: r.stderr.replace(image, "IMG") })
  return { real: mask(real, /img\d+\.qcow2/g), ours: mask(ours, /img\d+\.qcow2/g) }
}

const expectSame = (args: ReadonlyArray<string>, input?: string): void => {
  const { real, ours } = both(args, input)
  expect(ours).toEqual(real)
}

describe("qemu-io commands: same output as qemu-io 7.2", () => {
  const sequences: Record<string, ReadonlyArray<string>> = {
    "readv/writev": ["writev -P 5 100 3 5", "readv -v 100 8", "readv -P 5 100 8", "readv -P 6 0 512 1k", "readv -q -P 7 64k 512 512", "writev -C -P 1 0 512", "writev 0"],
    // One request in flight at a time: qemu-io prints completions in whatever order its thread pool finishes them.
    "aio requests": ["aio_write -P 9 0 512 512", "aio_flush", "aio_read -P 9 0 1k", "aio_flush", "aio_read -P 8 0 512", "aio_flush", "aio_read -v 0 16", "aio_flush", "aio_read -i 0 1", "aio_write -i 0 1", "aio_write -q 0 512", "aio_flush", "aio_read -C 0 512", "aio_flush"],
    "aio errors": ["aio_read 2M 512", "aio_flush", "aio_write 2M 512", "aio_flush", "aio_write -u 0 4k", "aio_write -z 0 512 512", "aio_write -z 0 4k", "aio_flush", "read -P 0 0 4k"],
    "help texts": ["help", "help read", "help write", "help readv", "help writev", "help aio_read", "help aio_write", "help open", "help reopen", "help discard", "help sigraise", "help length", "help map", "help foo"],
    "vector argument errors": ["readv 0 3G", "readv 0 2G 2G", "readv x 1", "readv -l 0 1", "writev -P 300 0 1", "readv 0 -5"],
    "process commands": ["sleep 10", "sleep x", "sleep 0x10", "sigraise 0", "sigraise x", "sigraise 100", "sigraise 10", "length"],
    "close and open": ["close", "length", "close", "open -r IMG", "read -P 7 64k 64k", "write 0 1", "open IMG", "close", "open -o driver=qcow2 IMG", "length"],
    "reopen": ["reopen -r", "write 0 512", "reopen -w", "write 0 512", "reopen -r -w", "reopen -c foo", "reopen -c none", "reopen -o foo=bar", "reopen -o lazy-refcounts=on", "read -P 0xcd 0 512"],
    "reopen options": ["reopen -o node-name=foo", "reopen -o file.node-name=foo", "reopen -o driver=raw", "reopen -o driver=qcow2", "reopen -o file.driver=file", "reopen -r -o read-only=on", "reopen -c none -o cache.direct=on", "reopen -o read-only=foo", "reopen -o cache.no-flush=bar", "reopen -o read-only=on", "write 0 1", "reopen -o read-only=off", "write 0 1"],
    "truncate": ["truncate -m falloc 2M", "truncate -m bogus 2M", "length", "truncate 1M", "length"],
    "alloc clips to the image": ["alloc 512k 5P", "alloc 1M 1", "alloc 2M 1", "alloc 0 2M", "alloc 64k"],
    "quit stops the run": ["length", "quit", "length"],
    "unknown commands and counts": ["foo", "sigraise", "sleep", "open", "read 0", "open a b c -Z"],
    "VM state": ["write -b -P 3 512 1k", "read -b -P 3 512 1k", "read -b -P 0 0 512", "read -b -P 0 100M 512", "write -b -P 0x11 1T 4k", "read -b -P 0x11 1T 4k", "write -b 1 3", "read -b 0 5", "write -b -z 0 512", "read -b 0 3G", "read -P 7 64k 64k"],
    "blkdebug as the top driver": ["open -o driver=blkdebug,image.driver=qcow2,align=4k blkdebug::IMG", "read -P 7 64k 64k"],
    "blkdebug without rules": ["open -o driver=qcow2,file.align=4k blkdebug::IMG", "read -P 7 64k 64k", "write -P 2 1 3", "read -P 2 1 3"]
  }
  for (const [name, commands] of Object.entries(sequences)) {
    it(name, () => expectSame([...commands.flatMap((c) => ["-c", c]), "IMG"]))
  }
  it("a read-only image refuses every writing command before parsing it", () =>
    expectSame(["-r", "-c", "write -Z 0 1", "-c", "aio_write 0 1", "-c", "writev 0 1", "-c", "discard 0 1", "-c", "truncate 1", "IMG"]))
  it("commands without an image", () => expectSame(["-c", "length", "-c", "read 0 1", "-c", "aio_flush", "-c", "help length", "-c", "open IMG", "-c", "length"]))
})

describe("VM state written here", () => {
  it("reads back in qemu-io, past the virtual disk, and the image stays clean", () => {
    const image = freshCopy()
    expect(run(process.execPath, [QEMU_IO_BIN, "-c", "write -b -P 0x11 1T 4k", "-c", "write -b -P 5 0 64k", "-c", "write -P 6 0 4k", image]).status).toBe(0)
    const r = run("qemu-io", ["-c", "read -b -P 0x11 1T 4k", "-c", "read -b -P 5 0 64k", "-c", "read -P 6 0 4k", "-c", "read -P 7 64k 64k", "-c", "length", image])
    expect(r.stdout).not.toMatch(/Pattern verification failed/)
    expect(r.stdout).toMatch(/1 MiB\n$/)
    expect(run("qemu-img", ["check", image]).status).toBe(0)
  })
  it("a raw image has no VM state area", () => {
    fs.writeFileSync(path.join(dir, "plain.raw"), new Uint8Array(1 << 16))
    const args = ["-f", "raw", "-c", "write -b 0 512", "-c", "read -b 0 512", "plain.raw"]
    const real = run("qemu-io", args)
    expect(run(process.execPath, [QEMU_IO_BIN, ...args])).toEqual(real)
  })
})

describe("QEMU image names in every subcommand", () => {
  it("json: and file: names open the image they describe", () => {
    const names = ['json:{"driver":"qcow2","file":{"driver":"file","filename":"base.qcow2"}}', "file:base.qcow2"]
    for (const name of names) {
      for (const args of [["check", name], ["compare", name, "base.qcow2"], ["map", "--output=json", name]]) {
        const real = run("qemu-img", args)
        expect(run(process.execPath, [QEMU_IMG_BIN, ...args]), args.join(" ")).toEqual(real)
      }
    }
  })
})

describe("qemu-io on standard input", () => {
  const inputs: Record<string, readonly [ReadonlyArray<string>, string]> = {
    "commands from a pipe, with the prompt": [["-f", "qcow2", "IMG"], "read -P 7 64k 512\nwrite 0 1k\nfoo\nread -P 0xcd 0 1k\n"],
    "open from standard input": [[], "open -o driver=qcow2 IMG\nlength\n"],
    "quit ends the input": [["IMG"], "length\nquit\nlength\n"],
    "empty input": [["IMG"], ""],
    "a last line without newline": [["IMG"], "length"],
    "blank lines": [["IMG"], "\n\nlength\n\n"]
  }
  for (const [name, [args, input]] of Object.entries(inputs)) {
    it(name, () => expectSame(args, input))
  }
  it("stdin commands name their image as they run", () => {
    const image = freshCopy()
    const r = run(process.execPath, [QEMU_IO_BIN], `open ${image}\nwrite -P 3 0 4k\nclose\n`)
    expect(r.status).toBe(0)
    expect(run("qemu-io", ["-c", "read -P 3 0 4k", image]).stdout).toMatch(/^read 4096\/4096/)
  })
})

describe("qemu-io's command line", () => {
  const lines: Record<string, ReadonlyArray<string>> = {
    "--cache, --aio and a repeated -f (the last wins)": ["--cache", "writeback", "--aio", "threads", "-f", "raw", "-f", "qcow2", "-c", "length", "IMG"],
    "operands permuted among options": ["IMG", "-c", "length", "-r", "-c", "read -P 7 64k 1"],
    "glued and long forms": ["-fqcow2", "--cmd=length", "--cach=unsafe", "-tnone", "-rU", "-T", "x", "-m", "IMG"],
    "-n and -i io_uring": ["-n", "-i", "io_uring", "-c", "write 0 1", "IMG"],
    "-k needs a direct cache": ["-k", "-c", "length", "IMG"],
    "-k with -t none": ["-k", "-t", "none", "-c", "length", "IMG"],
    "bad cache, aio and discard modes": ["-t", "bogus", "IMG"],
    "bad aio mode": ["-i", "bogus", "IMG"],
    "bad discard mode": ["-d", "bogus", "IMG"],
    "--image-opts and -f": ["--image-opts", "-f", "qcow2", "driver=qcow2,file.filename=IMG", "-c", "length"],
    "--image-opts": ["--image-opts", "driver=qcow2,file.filename=IMG", "-c", "read -P 7 64k 64k"],
    "json: names": ['json:{"driver":"qcow2","file":{"driver":"file","filename":"IMG"}}', "-c", "length"],
    "json: with single quotes": ["json:{'driver':'qcow2','file':{'driver':'file','filename':'IMG'}}", "-c", "length"],
    "json: with file.filename": ['json:{"driver":"raw","file.filename":"IMG"}', "-c", "length"],
    "file: names": ["-f", "qcow2", "file:IMG", "-c", "info"],
    "copy-on-read on a read-only image": ["-r", "-C", "IMG", "-c", "length"],
    "-s keeps the image as it was": ["-s", "-c", "write -P 1 0 64k", "-c", "read -P 1 0 64k", "IMG"],
    "unknown driver": ["-f", "bogus", "IMG"]
  }
  for (const [name, args] of Object.entries(lines)) {
    it(name, () => expectSame(args))
  }
  it("-s writes leave the image untouched", () => {
    const image = freshCopy()
    expect(run(process.execPath, [QEMU_IO_BIN, "-s", "-c", "write -P 1 0 64k", image]).status).toBe(0)
    expect(run("qemu-io", ["-c", "read -P 0 0 64k", image]).stdout).toMatch(/^read 65536/)
    expect(run("qemu-img", ["check", image]).status).toBe(0)
  })
  /** The usage text itself is qemu-io's, without QEMU's bug-report lines. */
  const usageErrors: Record<string, ReadonlyArray<string>> = {
    "an unknown short option": ["-Z", "IMG"],
    "an unknown long option": ["--bogus"],
    "an ambiguous prefix": ["--c", "x"],
    "a flag given a value": ["--help=x"],
    "a missing value": ["-f"],
    "a missing long value": ["--cmd"],
    "two files": ["IMG", "IMG"]
  }
  for (const [name, args] of Object.entries(usageErrors)) {
    it(name, () => {
      const { real, ours } = both(args)
      expect(ours.stderr).toBe(real.stderr)
      expect(ours.status).toBe(real.status)
      expect(real.stdout.startsWith(ours.stdout)).toBe(true)
      expect(ours.stdout).toMatch(/^Usage: qemu-io \[OPTIONS\]/)
    })
  }
})

describe("invoked names and signals", () => {
  it("messages carry the name the tool was run by", () => {
    expect(run(process.execPath, [BUNDLE, "io", "nofile.qcow2"]).stderr).toMatch(/^qcow2: can't open device nofile.qcow2: /)
    expect(run(process.execPath, [QEMU_IO_BIN, "nofile.qcow2"]).stderr).toMatch(/^qemu-io: can't open device nofile.qcow2: /)
    // exec -a qemu-io node qcow2.mjs io …, as the iotests wrapper runs it.
    expect(run(process.execPath, [BUNDLE, "io", "-c", "length", "nofile.qcow2"], "", "qemu-io").stderr).toMatch(/^qemu-io: can't open/)
    expect(run(process.execPath, [BUNDLE, "-c", "length", "base.qcow2"], "", "qemu-io").stdout).toBe("1 MiB\n")
    expect(run(process.execPath, [QEMU_IMG_BIN, "info", "nofile.qcow2"]).stderr).toMatch(/^qemu-img: Could not open 'nofile.qcow2'/)
  })
  it("sigraise 9 kills the process at once, after the output of the commands before it", () => {
    const image = freshCopy()
    const r = run(process.execPath, [QEMU_IO_BIN, "-c", "write -P 1 0 512", "-c", "sigraise 9", "-c", "length", image])
    expect(r.signal).toBe("SIGKILL")
    expect(r.stdout).toMatch(/^wrote 512\/512 bytes at offset 0\n[^\n]*\n$/)
  })
  it("abort dies of SIGABRT without a stack trace", () => {
    const r = run(process.execPath, [QEMU_IO_BIN, "-c", "length", "-c", "abort", "base.qcow2"])
    expect(r.signal).toBe("SIGABRT")
    expect(r.stdout).toBe("1 MiB\n")
    expect(r.stderr).toBe("")
  })
  it("each command's output is written when it completes: a killed run keeps it", async () => {
    const image = freshCopy()
    const child = spawn(process.execPath, [QEMU_IO_BIN, image], { cwd: dir, stdio: ["pipe", "pipe", "pipe"] })
    let stdout = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stdin.write("write -P 2 0 4k\nsleep 60000\n")
    const deadline = Date.now() + 20_000
    while (!stdout.includes("wrote 4096/4096") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)))
    child.kill("SIGKILL")
    expect(await exited).toBe("SIGKILL")
    expect(stdout).toMatch(/^qemu-io> wrote 4096\/4096 bytes at offset 0\n[^\n]*\nqemu-io> $/)
  }, 30_000)
})
