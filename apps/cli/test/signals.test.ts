/**
 * Signals end a job the way they end qemu-img: SIGTERM, SIGINT and SIGHUP
 * stop the command (its scopes close, so the image is flushed and its
 * metadata consistent) and the process dies of the signal, which a shell
 * reports as 128 + its number (143, 130, 129), never 0. qemu-img ignores
 * SIGPIPE (output to a closed pipe is lost and the job goes on) and blocks
 * SIGUSR1, SIGALRM and SIGIO.
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, qemu } from "./helpers.js"

interface Ended {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

interface Job {
  readonly pid: number
  readonly kill: (signal: NodeJS.Signals) => void
  readonly ended: Promise<Ended>
  readonly stdout: () => string
}

const start = (cwd: string, args: ReadonlyArray<string>, closeStdout = false): Job => {
  const child = spawn(process.execPath, [BUNDLE, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] })
  let stdout = ""
  let stderr = ""
  if (closeStdout) child.stdout.destroy()
  else child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
  const timer = setTimeout(() => child.kill("SIGKILL"), 50_000)
  const ended = new Promise<Ended>((resolve) =>
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  )
  return { pid: child.pid!, kill: (s) => child.kill(s), ended, stdout: () => stdout }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Waits until `file` has at least `bytes` (the job is well under way). */
const untilSize = async (file: string, bytes: number, job: Job): Promise<void> => {
  let done = false
  void job.ended.then(() => (done = true))
  for (;;) {
    if (done) throw new Error(`the job ended before ${file} reached ${bytes} bytes`)
    try {
      if (fs.statSync(file).size >= bytes) return
    } catch {
      // not created yet
    }
    await sleep(10)
  }
}

/** A shell's view of how the process ended: 128 + signal number for a signal death. */
const status = (e: Ended): number => (e.signal !== null ? 128 + os.constants.signals[e.signal] : e.code!)

/** The process ended because of `signal`: died of it (as qemu-img does) or exited 128 + its number. */
const expectSignalEnd = (e: Ended, signal: NodeJS.Signals): void => {
  expect(status(e)).toBe(128 + os.constants.signals[signal])
  expect(e.stderr).not.toMatch(/internal error|Error:|at /)
}

/** qemu-img check finds no corruption (leaks are allowed: exit status 0 or 3). */
const expectConsistent = (dir: string, file: string): void => {
  const r = qemu(dir, "qemu-img", ["check", "--output=json", file], true)
  expect([0, 3], `${r.stdout}${r.stderr}`).toContain(r.status)
  const json = JSON.parse(r.stdout) as { corruptions?: number; "check-errors"?: number }
  expect(json.corruptions ?? 0).toBe(0)
  expect(json["check-errors"] ?? 0).toBe(0)
}

/** A qcow2 source that compresses, but slowly: 128 MiB of random nibbles (a 1 MiB block repeated). */
const compressibleSource = (dir: string): string => {
  const block = Buffer.alloc(1 << 20)
  for (let i = 0; i < block.length; i++) block[i] = Math.floor(Math.random() * 16)
  const fd = fs.openSync(path.join(dir, "src.raw"), "w")
  for (let i = 0; i < 128; i++) fs.writeSync(fd, block)
  fs.closeSync(fd)
  qemu(dir, "qemu-img", ["convert", "-O", "qcow2", "src.raw", "src.qcow2"])
  fs.rmSync(path.join(dir, "src.raw"))
  return "src.qcow2"
}

/** `io` arguments for `n` 1 MiB writes with pattern 0x5a. */
const writeLoop = (n: number): string[] => Array.from({ length: n }, (_, i) => ["-c", `write -P 0x5a ${i}M 1M`]).flat()

describe("signals", () => {
  let dir: string
  let source: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-signals-")
    source = compressibleSource(dir)
  })

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`convert -c stopped by ${signal}: dies of it, target consistent`, async () => {
      const target = `convert-${signal}.qcow2`
      const job = start(dir, ["convert", "-c", "-O", "qcow2", source, target])
      await untilSize(path.join(dir, target), 4 << 20, job)
      job.kill(signal)
      const e = await job.ended
      expectSignalEnd(e, signal)
      expectConsistent(dir, target)
    })
  }

  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    it(`io with 1000 writes stopped by ${signal}: dies of it, image consistent`, async () => {
      const image = `io-${signal}.qcow2`
      qemu(dir, "qemu-img", ["create", "-f", "qcow2", image, "1G"])
      const job = start(dir, ["io", ...writeLoop(1000), image])
      await untilSize(path.join(dir, image), 16 << 20, job)
      job.kill(signal)
      const e = await job.ended
      expectSignalEnd(e, signal)
      expect(e.stdout.match(/^wrote /gm)?.length ?? 0).toBeLessThan(1000)
      expectConsistent(dir, image)
      // What was reported written reads back.
      const r = qemu(dir, "qemu-io", ["-c", "read -P 0x5a 0 1M", image], true)
      expect(r.stdout).not.toMatch(/Pattern verification failed/)
    })
  }

  it("a second signal while stopping ends the process too", async () => {
    const image = "io-twice.qcow2"
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", image, "1G"])
    const job = start(dir, ["io", ...writeLoop(1000), image])
    await untilSize(path.join(dir, image), 8 << 20, job)
    job.kill("SIGTERM")
    job.kill("SIGINT")
    const e = await job.ended
    expect([130, 143]).toContain(status(e))
    expectConsistent(dir, image)
  })

  it("SIGUSR1, SIGALRM and SIGIO change nothing, as for qemu-io (which blocks them): no debugger, the job ends normally", async () => {
    const image = "io-usr1.qcow2"
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", image, "64M"])
    const job = start(dir, ["io", ...writeLoop(64), image])
    await untilSize(path.join(dir, image), 4 << 20, job)
    for (const signal of ["SIGUSR1", "SIGALRM", "SIGIO"] as const) job.kill(signal)
    const e = await job.ended
    expect(e.signal).toBeNull()
    expect(e.code).toBe(0)
    expect(e.stderr).toBe("")
    expect(e.stdout.match(/^wrote /gm)?.length).toBe(64)
    expectConsistent(dir, image)
  })

  it("output to a closed pipe is dropped: the job runs to its end and exits 0, as qemu-io does", async () => {
    const image = "pipe.qcow2"
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", image, "64M"])
    const job = start(dir, ["io", ...writeLoop(64), image], true)
    const e = await job.ended
    expect(e.code).toBe(0)
    expect(e.stderr).toBe("")
    expect(qemu(dir, "qemu-io", ["-c", "read -P 0x5a 63M 1M", image]).stdout).not.toMatch(/verification failed/)
    const map = start(dir, ["map", "--output=json", image], true)
    const m = await map.ended
    expect(m.code).toBe(0)
    expect(m.stderr).toBe("")
  })
})
