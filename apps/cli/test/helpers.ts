/**
 * Test helpers: build the bundle once, run it (the bundle is what ships),
 * run qemu-img / qemu-io, and compare qemu-img map output.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { spawnQemu } from "@qcow2/qemu-oracle"

export const CLI_DIR = path.resolve(import.meta.dirname, "..")
export const BUNDLE = path.join(CLI_DIR, "dist", "bin", "qcow2.cjs")

/** The bundle is built by test/global-setup.ts before any test file runs; this only checks it is there. */
export const buildBundle = (): void => {
  if (!fs.existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: the vitest global setup builds it`)
}

export const makeTempDir = (prefix: string): string => fs.mkdtempSync(path.join(os.tmpdir(), prefix))

export interface Run {
  readonly status: number
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
}

/** Runs the bundled CLI in `cwd`. */
export const qcow2 = (cwd: string, args: ReadonlyArray<string>, timeoutMs = 120_000): Run => {
  const start = performance.now()
  const r = spawnSync(process.execPath, [BUNDLE, ...args], { cwd, encoding: "utf8", timeout: timeoutMs, maxBuffer: 256 << 20 })
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - start }
}

/** Runs a bash script in `cwd`: its exit status and stdout then stderr, as one text. */
export const sh = (cwd: string, script: string): { readonly status: number; readonly out: string } => {
  const r = spawnSync("bash", ["-c", script], { cwd, encoding: "utf8", maxBuffer: 64 << 20 })
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` }
}

/**
 * Runs a qemu tool (qemu-img, qemu-io) in `cwd`; throws on failure unless
 * `allowFail`. QEMU's failure to time PBKDF2 is retried (see @qcow2/qemu-oracle).
 */
export const qemu = (cwd: string, tool: string, args: ReadonlyArray<string>, allowFail = false): Run => {
  const start = performance.now()
  const run = { ...spawnQemu(tool, args, { cwd }), ms: performance.now() - start }
  if (!allowFail && run.status !== 0) {
    throw new Error(`${tool} ${args.join(" ")} failed (${run.status}): ${run.stderr}`)
  }
  return run
}

export interface MapRecord {
  start: number
  length: number
  depth: number
  present: boolean
  zero: boolean
  data: boolean
  offset?: number
}

/**
 * Normalizes `qemu-img map --output=json` records for comparison. QEMU
 * asks the host file system where its holes are (SEEK_DATA/SEEK_HOLE)
 * when it believes an image is metadata-preallocated, and then reports
 * allocated data clusters that are holes in the file as "zero": true.
 * Node has no SEEK_HOLE, so a data range with a host offset is compared
 * with "zero" cleared, and records are re-merged afterwards.
 */
export const normalizeMap = (records: ReadonlyArray<MapRecord>): MapRecord[] => {
  const out: MapRecord[] = []
  for (const r0 of records) {
    const r = { ...r0 }
    if (r.data && r.offset !== undefined) r.zero = false
    const last = out[out.length - 1]
    if (
      last !== undefined &&
      last.depth === r.depth &&
      last.present === r.present &&
      last.zero === r.zero &&
      last.data === r.data &&
      (last.offset === undefined) === (r.offset === undefined) &&
      (last.offset === undefined || last.offset + last.length === r.offset)
    ) {
      last.length += r.length
    } else {
      out.push(r)
    }
  }
  return out
}

/** File size and content equal, compared by qemu-img (sparse-aware, fast for huge sparse files). */
export const sameRawFiles = (cwd: string, a: string, b: string): { same: boolean; detail: string } => {
  const sa = fs.statSync(path.join(cwd, a)).size
  const sb = fs.statSync(path.join(cwd, b)).size
  if (sa !== sb) return { same: false, detail: `size ${sa} != ${sb}` }
  const r = qemu(cwd, "qemu-img", ["compare", "-f", "raw", "-F", "raw", a, b], true)
  return { same: r.status === 0, detail: r.stdout + r.stderr }
}

/** Runs the bundled CLI without blocking this process's event loop (for in-process servers). */
export const qcow2Async = (cwd: string, args: ReadonlyArray<string>, timeoutMs = 120_000): Promise<Run> =>
  new Promise((resolve) => {
    const start = performance.now()
    execFile(process.execPath, [BUNDLE, ...args], { cwd, encoding: "utf8", timeout: timeoutMs, maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
      const status = err === null ? 0 : typeof err.code === "number" ? err.code : -1
      resolve({ status, stdout, stderr, ms: performance.now() - start })
    })
  })

/** True once something accepts connections on the Unix socket. */
const accepting = (socket: string): Promise<boolean> =>
  new Promise((resolve) => {
    const connection = net.createConnection({ path: socket })
    connection.once("connect", () => {
      connection.destroy()
      resolve(true)
    })
    connection.once("error", () => resolve(false))
  })

/**
 * Starts a real qemu-nbd serving on the Unix socket `socket` (`args` are
 * its other arguments) and waits until it accepts connections; fails if it
 * does not within 5 s, so a test never runs against a server that is not there.
 */
export const startQemuNbd = async (socket: string, args: ReadonlyArray<string>): Promise<ChildProcess> => {
  const server = spawn("qemu-nbd", ["-k", socket, ...args], { stdio: "ignore" })
  for (let i = 0; i < 500; i++) {
    if (await accepting(socket)) return server
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  server.kill("SIGKILL")
  throw new Error(`qemu-nbd ${args.join(" ")} did not accept connections on ${socket}`)
}

/** Stops a server started by `startQemuNbd` and waits for it to exit. */
export const stopServer = async (server: ChildProcess): Promise<void> => {
  if (server.exitCode !== null || server.signalCode !== null) return
  const exited = new Promise((resolve) => server.once("exit", resolve))
  server.kill("SIGTERM")
  await exited
}
