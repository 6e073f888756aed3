/**
 * `qcow2 bench` against `qemu-img bench` 7.2: the same lines (timings
 * masked), messages and exit codes; write tests leave the same image;
 * and, on a fake image, DEPTH requests really are in flight at once and
 * drained flushes see none in flight.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import type { Image } from "@qcow2/image"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BenchOptions, runRequests } from "../src/commands/bench.js"
import { buildBundle, makeTempDir, qcow2, qemu, type Run } from "./helpers.js"

let dir = ""
beforeAll(() => {
  buildBundle()
  dir = makeTempDir("qcow2-bench-")
  qemu(dir, "qemu-img", ["create", "-q", "-f", "qcow2", "b.qcow2", "1M"])
  qemu(dir, "qemu-io", ["-c", "write -P 0x5a 64k 128k", "b.qcow2"])
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const masked = (r: Run) => ({
  status: r.status,
  stdout: r.stdout.replace(/Run completed in \d+\.\d{3} seconds\./, "Run completed in X seconds."),
  stderr: r.stderr.replace(/^qemu-img: /gm, "qcow2: ")
})

describe("qcow2 bench prints what qemu-img bench prints", () => {
  const lines: ReadonlyArray<ReadonlyArray<string>> = [
    ["-c", "10", "b.qcow2"],
    ["-c", "100", "-d", "3", "-s", "512", "-S", "1536", "-o", "4096", "b.qcow2"],
    ["-c", "0x10", "-s", "0", "b.qcow2"],
    ["-c", "2", "-S", "0", "-q", "-f", "qcow2", "-t", "none", "-i", "io_uring", "b.qcow2"],
    ["-c", "10", "-w", "--flush-interval=4", "-d", "2", "b.qcow2"],
    ["-c", "10", "-w", "--flush-interval=4", "--no-drain", "-d", "4", "b.qcow2"],
    ["-c", "1", "-U", "b.qcow2"],
    ["-c", "1", "--image-opts", "driver=qcow2,file.filename=b.qcow2"],
    // Offsets wrap at the end of the image; a request crossing it fails as the block layer's range check does.
    ["-c", "3", "-o", "1020k", "b.qcow2"],
    ["-c", "2", "-o", "1022k", "b.qcow2"],
    ["-c", "-1", "b.qcow2"],
    ["-c", "2147483648", "b.qcow2"],
    ["-d", "x", "b.qcow2"],
    ["-s", "3G", "b.qcow2"],
    ["-S", "2G", "b.qcow2"],
    ["--pattern=256", "-w", "b.qcow2"],
    ["--flush-interval=x", "b.qcow2"],
    ["-c", "10", "--flush-interval=4", "b.qcow2"],
    ["-c", "10", "-w", "--flush-interval=4", "-d", "8", "b.qcow2"],
    ["-t", "bogus", "b.qcow2"],
    ["-i", "bogus", "b.qcow2"],
    ["-n", "-c", "1", "b.qcow2"],
    ["-c", "1", "-w", "-U", "b.qcow2"],
    ["-c", "1", "-f", "raw", "b.qcow2"]
  ]
  it.each(lines.map((args) => [args.join(" "), args] as const))("bench %s", (_, args) => {
    const theirs = qemu(dir, "qemu-img", ["bench", ...args], true)
    expect(masked(qcow2(dir, ["bench", ...args]))).toEqual(masked(theirs))
  })
})

describe("write tests leave the image qemu-img bench leaves", () => {
  const cases: ReadonlyArray<{ readonly name: string; readonly format: "qcow2" | "raw"; readonly args: ReadonlyArray<string> }> = [
    { name: "qcow2, wrapping, depth 8, drained flushes", format: "qcow2", args: ["-c", "700", "-d", "8", "-s", "2k", "-S", "6k", "--pattern=0xa5", "--flush-interval=16"] },
    { name: "qcow2, 64k requests over allocated data, writethrough", format: "qcow2", args: ["-c", "40", "-s", "64k", "-S", "128k", "-o", "32k", "--pattern=3", "-t", "writethrough"] },
    { name: "raw, --no-drain", format: "raw", args: ["-c", "300", "-d", "4", "-s", "1000", "--pattern=9", "--flush-interval=8", "--no-drain"] }
  ]
  it.each(cases)("$name", ({ format, args }) => {
    for (const name of ["theirs", "ours"]) {
      qemu(dir, "qemu-img", ["create", "-q", "-f", format, `${name}.${format}`, "1M"])
      qemu(dir, "qemu-io", ["-f", format, "-c", "write -P 0x5a 64k 128k", `${name}.${format}`])
    }
    const theirs = qemu(dir, "qemu-img", ["bench", "-w", "-f", format, ...args, `theirs.${format}`])
    const ours = qcow2(dir, ["bench", "-w", "-f", format, ...args, `ours.${format}`])
    expect(masked(ours)).toEqual(masked(theirs))
    expect(qemu(dir, "qemu-img", ["compare", "-f", format, "-F", format, `theirs.${format}`, `ours.${format}`], true).stdout).toBe("Images are identical.\n")
    if (format === "qcow2") expect(qemu(dir, "qemu-img", ["check", "ours.qcow2"], true).status).toBe(0)
    fs.rmSync(path.join(dir, `theirs.${format}`))
    fs.rmSync(path.join(dir, `ours.${format}`))
  })
})

describe("the request schedule (a fake image that counts what is in flight)", () => {
  const fakeImage = (size: number) => {
    const log = { inFlight: 0, maxInFlight: 0, requests: [] as number[], flushesWithRequestsInFlight: 0, flushes: 0 }
    const request = (offset: number) =>
      Effect.gen(function* () {
        log.requests.push(offset)
        log.inFlight++
        log.maxInFlight = Math.max(log.maxInFlight, log.inFlight)
        yield* Effect.sleep(1)
        log.inFlight--
      })
    const image = {
      virtualSize: size,
      read: (offset: number) => request(offset),
      write: (offset: number) => request(offset),
      flush: () =>
        Effect.sync(() => {
          log.flushes++
          if (log.inFlight > 0) log.flushesWithRequestsInFlight++
        })
    } as unknown as Image
    return { image, log }
  }
  const options = (o: Partial<BenchOptions>): BenchOptions => ({
    file: "fake",
    count: 10,
    depth: 64,
    bufferSize: 4096,
    step: 4096,
    offset: 0,
    write: false,
    pattern: 0,
    flushInterval: 0,
    drainOnFlush: true,
    cache: "writeback",
    forceShare: false,
    ...o
  })

  it("keeps DEPTH requests in flight and issues them at offset + i * step modulo the size", async () => {
    const { image, log } = fakeImage(40960)
    await Effect.runPromise(runRequests(image, options({ count: 100, depth: 7, step: 8192 })))
    expect(log.maxInFlight).toBe(7)
    expect(log.requests).toEqual(Array.from({ length: 100 }, (_, i) => (i * 8192) % 40960))
  })

  it("flushes when the requests not yet issued are a multiple of the interval, with none in flight unless --no-drain", async () => {
    const drained = fakeImage(1 << 20)
    await Effect.runPromise(runRequests(drained.image, options({ write: true, count: 10, depth: 2, flushInterval: 4 })))
    // Not yet issued at the completions: 8 (drain, flush), 6, 5, 4 (drain, flush), 2, 1, 0 (drain, flush).
    expect([drained.log.flushes, drained.log.flushesWithRequestsInFlight]).toEqual([3, 0])
    const undrained = fakeImage(1 << 20)
    await Effect.runPromise(runRequests(undrained.image, options({ write: true, count: 40, depth: 4, flushInterval: 4, drainOnFlush: false })))
    expect(undrained.log.flushes).toBeGreaterThan(0)
    expect(undrained.log.maxInFlight).toBe(4)
  })
})
