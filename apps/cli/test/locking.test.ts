/**
 * Image locking against live QEMU processes, both ways: qemu-io holding an
 * image while qcow2 runs, and this toolkit (the library, in a child
 * process) holding one while qemu-io / qemu-img run. Messages and exit
 * codes are compared with what qemu-img / qemu-io print in the same
 * situation; the bytes locked are compared with QEMU's through /proc/locks.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { buildBundle, BUNDLE, makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

const HOLD_IMAGE = path.join(import.meta.dirname, "fixtures", "hold-image.mjs")
/** Generous: the CI machine may be busy, and a holder that is not ready yet would make a test pass vacuously. */
const READY_MS = 60_000

let dir = ""
const holders: ChildProcess[] = []

beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-locking-")
})
afterEach(async () => {
  await Promise.all(holders.splice(0).map(release))
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** The bytes other open files hold OFD locks on in `file`, sorted (from /proc/locks). */
const lockedBytes = (file: string): number[] => {
  const stat = fs.statSync(path.join(dir, file))
  // /proc/locks names the file MAJOR:MINOR:INODE, the device numbers in hex.
  const major = (stat.dev >> 8) & 0xfff
  const minor = (stat.dev & 0xff) | ((stat.dev >> 12) & 0xfff00)
  const id = `${major.toString(16).padStart(2, "0")}:${minor.toString(16).padStart(2, "0")}:${stat.ino}`
  const bytes: number[] = []
  for (const line of fs.readFileSync("/proc/locks", "utf8").split("\n")) {
    const fields = line.trim().split(/\s+/)
    if (fields[1] !== "OFDLCK" || fields[5] !== id) continue
    for (let b = Number(fields[6]); b <= Number(fields[7]); b++) bytes.push(b)
  }
  return bytes.sort((a, b) => a - b)
}

const waitFor = async (what: string, ready: () => boolean, child: ChildProcess): Promise<void> => {
  const deadline = Date.now() + READY_MS
  while (!ready()) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}) before it was ready`)
    if (Date.now() > deadline) throw new Error(`${what} was not ready after ${READY_MS} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Closes a holder's standard input (it then closes the image and exits); kills it if it does not. */
const release = async (child: ChildProcess): Promise<void> => {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  child.stdin?.end()
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000)
  await exited
  clearTimeout(timer)
}

/** qemu-io (interactive, reading commands from a pipe) holding `file` until released; ready once it holds byte 100. */
const qemuIoHolds = async (file: string, ...flags: string[]): Promise<ChildProcess> => {
  const child = spawn("qemu-io", [...flags, file], { cwd: dir, stdio: ["pipe", "pipe", "inherit"] })
  holders.push(child)
  // Its first prompt comes once the whole chain is open (and locked): the top file's lock alone comes before the backing file's.
  let out = ""
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()))
  await waitFor(`qemu-io ${flags.join(" ")} ${file}`, () => out.includes("qemu-io> ") && lockedBytes(file).includes(100), child)
  return child
}

/** This toolkit's library holding `file` (and its chain) in a child process until released. */
const libraryHolds = async (file: string, mode: "rw" | "ro"): Promise<ChildProcess> => {
  const child = spawn(process.execPath, [HOLD_IMAGE, file, mode], { cwd: dir, stdio: ["pipe", "pipe", "inherit"] })
  holders.push(child)
  let out = ""
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()))
  await waitFor(`library holding ${file}`, () => {
    if (out.startsWith("failed")) throw new Error(out)
    return out.startsWith("ready")
  }, child)
  return child
}

/** What qemu-img / qemu-io printed, with the program name as qcow2 prints it. */
const asQcow2 = (r: Run): { status: number; stderr: string } => ({ status: r.status, stderr: r.stderr.replace(/^qemu-(img|io): /gm, "qcow2: ") })

/** Runs `qemu-img ARGS` (or qemu-io for `io ARGS`) and `qcow2 ARGS`; both must fail or succeed alike, with the same message. */
const sameAsQemu = (args: ReadonlyArray<string>): Run => {
  const [command, ...rest] = args
  const theirs = command === "io" ? qemu(dir, "qemu-io", rest, true) : qemu(dir, "qemu-img", args, true)
  const ours = qcow2(dir, args)
  expect({ status: ours.status, stderr: ours.stderr }, `qcow2 ${args.join(" ")}`).toEqual(asQcow2(theirs))
  return ours
}

const fresh = (): void => {
  for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f))
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "base.qcow2", "1M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x11 0 64k", "base.qcow2"])
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x22 64k 64k", "top.qcow2"])
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "other.qcow2", "1M"])
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "dtop.qcow2", "1M"])
  qemu(dir, "qemu-img", ["create", "-q", "-f", "raw", "plain.raw", "1M"])
}

describe("qemu-io holds the image, qcow2 runs", () => {
  it("read-write: every open that needs what qemu-io does not share is refused with QEMU's message; -U reads; nothing is written", async () => {
    fresh()
    const before = fs.readFileSync(path.join(dir, "top.qcow2"))
    await qemuIoHolds("top.qcow2", "-f", "qcow2")
    sameAsQemu(["io", "-c", "write 0 4k", "top.qcow2"])
    sameAsQemu(["io", "-r", "-c", "read 0 4k", "top.qcow2"])
    sameAsQemu(["io", "-U", "-c", "read 0 4k", "top.qcow2"])
    expect(sameAsQemu(["io", "-r", "-U", "-c", "read -P 0x22 64k 64k", "top.qcow2"]).stdout).toContain("read 65536/65536 bytes at offset 65536")
    sameAsQemu(["info", "top.qcow2"])
    sameAsQemu(["info", "-U", "top.qcow2"])
    sameAsQemu(["map", "top.qcow2"])
    sameAsQemu(["check", "top.qcow2"])
    sameAsQemu(["check", "-U", "-r", "all", "top.qcow2"])
    sameAsQemu(["compare", "top.qcow2", "other.qcow2"])
    sameAsQemu(["compare", "-U", "top.qcow2", "top.qcow2"])
    sameAsQemu(["convert", "-n", "-O", "qcow2", "other.qcow2", "top.qcow2"])
    sameAsQemu(["convert", "-O", "qcow2", "other.qcow2", "top.qcow2"])
    sameAsQemu(["convert", "-O", "raw", "other.qcow2", "top.qcow2"])
    sameAsQemu(["convert", "-n", "-O", "raw", "other.qcow2", "top.qcow2"])
    sameAsQemu(["create", "-f", "raw", "top.qcow2", "1M"])
    const create = qcow2(dir, ["create", "-f", "qcow2", "top.qcow2", "1M"])
    expect({ status: create.status, stderr: create.stderr }).toEqual(asQcow2(qemu(dir, "qemu-img", ["create", "-f", "qcow2", "top.qcow2", "1M"], true)))
    // The backing file is locked too: read-only, not shared for writing.
    sameAsQemu(["io", "-c", "write 0 4k", "base.qcow2"])
    sameAsQemu(["io", "-r", "-c", "read 0 4k", "base.qcow2"])
    expect(fs.readFileSync(path.join(dir, "top.qcow2")).equals(before)).toBe(true)
  }, 240_000)

  it("read-only: readers share, a writer is refused", async () => {
    fresh()
    await qemuIoHolds("top.qcow2", "-r", "-f", "qcow2")
    sameAsQemu(["io", "-c", "write 0 4k", "top.qcow2"])
    sameAsQemu(["check", "-r", "all", "top.qcow2"])
    expect(sameAsQemu(["io", "-r", "-c", "read -P 0x11 0 64k", "top.qcow2"]).status).toBe(0)
    expect(sameAsQemu(["info", "top.qcow2"]).status).toBe(0)
  }, 120_000)
})

describe("the library holds the image, qemu-io and qemu-img run", () => {
  it("read-write: qemu-io and qemu-img are refused with their own messages, -U reads; the backing file is held read-only", async () => {
    fresh()
    await libraryHolds("top.qcow2", "rw")
    const io = qemu(dir, "qemu-io", ["-c", "write 0 4k", "top.qcow2"], true)
    expect([io.status, io.stderr]).toEqual([1, "qemu-io: can't open device top.qcow2: Failed to get \"write\" lock\nIs another process using the image [top.qcow2]?\n"])
    const info = qemu(dir, "qemu-img", ["info", "top.qcow2"], true)
    expect([info.status, info.stderr]).toEqual([1, "qemu-img: Could not open 'top.qcow2': Failed to get shared \"write\" lock\nIs another process using the image [top.qcow2]?\n"])
    expect(qemu(dir, "qemu-img", ["info", "-U", "top.qcow2"], true).status).toBe(0)
    expect(qemu(dir, "qemu-io", ["-r", "-U", "-c", "read -P 0x22 64k 64k", "top.qcow2"], true).stdout).toContain("read 65536/65536 bytes")
    const base = qemu(dir, "qemu-io", ["-c", "write 0 4k", "base.qcow2"], true)
    expect([base.status, base.stderr]).toEqual([1, "qemu-io: can't open device base.qcow2: Failed to get \"write\" lock\nIs another process using the image [base.qcow2]?\n"])
    expect(qemu(dir, "qemu-io", ["-r", "-c", "read -P 0x11 0 64k", "base.qcow2"], true).status).toBe(0)
  }, 120_000)

  it("read-only: qemu-io reads alongside, a qemu-io writer is refused", async () => {
    fresh()
    await libraryHolds("top.qcow2", "ro")
    expect(qemu(dir, "qemu-io", ["-r", "-c", "read -P 0x22 64k 64k", "top.qcow2"], true).status).toBe(0)
    const io = qemu(dir, "qemu-io", ["-c", "write 0 4k", "top.qcow2"], true)
    expect([io.status, io.stderr]).toEqual([1, "qemu-io: can't open device top.qcow2: Failed to get \"write\" lock\nIs another process using the image [top.qcow2]?\n"])
  }, 120_000)
})

describe("the bytes locked are QEMU's", () => {
  const cases: ReadonlyArray<{ readonly name: string; readonly file: string; readonly also: ReadonlyArray<string>; readonly flags: ReadonlyArray<string> }> = [
    { name: "qcow2 over a backing file, read-write", file: "top.qcow2", also: ["base.qcow2"], flags: ["-f", "qcow2"] },
    { name: "qcow2 over a backing file, read-only", file: "top.qcow2", also: ["base.qcow2"], flags: ["-r", "-f", "qcow2"] },
    { name: "qcow2 with an external data file, read-write", file: "dtop.qcow2", also: ["data.raw"], flags: ["-f", "qcow2"] },
    { name: "raw, read-write", file: "plain.raw", also: [], flags: ["-f", "raw"] }
  ]
  it.each(cases)("$name", async ({ file, also, flags }) => {
    fresh()
    const files = [file, ...also]
    const theirs = await qemuIoHolds(file, ...flags)
    const qemuBytes = files.map(lockedBytes)
    await release(theirs)
    expect(files.map(lockedBytes)).toEqual(files.map(() => []))
    const ours = await libraryHolds(file, flags.includes("-r") ? "ro" : "rw")
    expect(files.map(lockedBytes)).toEqual(qemuBytes)
    await release(ours)
    expect(files.map(lockedBytes)).toEqual(files.map(() => []))
  }, 120_000)
})

// The locks need koffi, which the shipped bundle loads at run time and
// which degrades to "no locks" when it cannot load; an experimental start-up
// change once made it fail only when stdout was a pipe, and nothing noticed.
describe("the CLI bundle takes QEMU's locks whatever its standard output is", () => {
  it.each(["pipe", "file"] as const)("stdout a %s", async (stdout) => {
    fresh()
    const theirs = await qemuIoHolds("top.qcow2", "-f", "qcow2")
    const qemuBytes = lockedBytes("top.qcow2")
    await release(theirs)
    const out = stdout === "file" ? fs.openSync(path.join(dir, "stdout.txt"), "w") : "pipe"
    const ours = spawn(process.execPath, [BUNDLE, "io", "-f", "qcow2", "top.qcow2"], { cwd: dir, stdio: ["pipe", out, "inherit"] })
    holders.push(ours)
    if (typeof out === "number") fs.closeSync(out)
    else ours.stdout!.resume()
    await waitFor("qcow2 io holding top.qcow2", () => lockedBytes("top.qcow2").length > 0, ours)
    expect(lockedBytes("top.qcow2")).toEqual(qemuBytes)
    await release(ours)
    expect(lockedBytes("top.qcow2")).toEqual([])
  }, 120_000)
})
