/**
 * Figures for the note, measured in Chromium here (by hand:
 * `pnpm -F @qcow2/browser bench`; not part of `pnpm test`): IndexedDB
 * throughput of the real browser store, with `qemu-img bench` on a local
 * raw file in the same run for scale, and the size of the browser image
 * stack (@qcow2/browser bundled, minified and gzipped). Prints a table;
 * asserts nothing about speed.
 */
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { gzipSync } from "node:zlib"
import { build } from "esbuild"
import { afterAll, describe, expect, it } from "vitest"
import { bundlePage, openPage, servePage } from "../test/harness.js"
import { mixedClusters } from "../test/page/clusters.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-browser-bench-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const MIB = Number(process.env.BENCH_MIB ?? 64)
const RANDOM_OPS = Number(process.env.BENCH_OPS ?? 2000)

/** CPU seconds (user + sys) used so far by process `root` and its live descendants (from /proc). */
const treeCpu = (root: number): number => {
  const stats = fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d)).flatMap((pid) => {
    try {
      const text = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
      const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
      return [{ pid: Number(pid), ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) }]
    } catch {
      return []
    }
  })
  const tree = new Set([root])
  for (let grew = true; grew; ) {
    grew = false
    for (const s of stats) if (!tree.has(s.pid) && tree.has(s.ppid)) (tree.add(s.pid), (grew = true))
  }
  return stats.filter((s) => tree.has(s.pid)).reduce((n, s) => n + s.ticks, 0) / 100
}

/** `qemu-img ARGS`: wall and CPU (user + sys) seconds, from /usr/bin/time. */
const qemuTimed = (...args: string[]): { wall: number; cpu: number } => {
  const run = spawnSync("/usr/bin/time", ["-f", "%e %U %S", "qemu-img", ...args], { cwd: dir, encoding: "utf8" })
  if (run.status !== 0) throw new Error(`qemu-img ${args[0]} failed: ${run.stderr}`)
  const [wall, user, sys] = run.stderr.trim().split("\n").pop()!.split(" ").map(Number)
  return { wall: wall!, cpu: user! + sys! }
}

const qemuBench = (...args: string[]) => qemuTimed("bench", ...args)

describe("figures", () => {
  it("IndexedDB throughput in Chromium, qemu-img bench on a raw file for scale", async () => {
    await bundlePage(dir)
    const server = await servePage(dir)
    const { browser, page } = await openPage(server.url)
    try {
      // Chromium runs as a child of this process: its CPU is this tree's (this process idles meanwhile).
      const pid = process.pid
      const rows: Array<string> = []
      const row = (what: string, rate: string, wall: number, cpu: number) => rows.push(`| ${what} | ${rate} | ${wall.toFixed(2)} s | ${cpu.toFixed(2)} s |`)
      const inPage = async (step: () => Promise<number>) => {
        const cpu = treeCpu(pid)
        const wall = await step()
        return { wall, cpu: treeCpu(pid) - cpu }
      }
      const bytes = MIB * 2 ** 20
      for (const every of [1, 16]) {
        const name = `seq-${every}`
        const seq = await inPage(() => page.evaluate(([n, m, e]) => window.qcow2Test.idbBench.sequential(n, m, e), [name, MIB, every] as const))
        row(`IndexedDB: ${MIB} sequential 1 MiB writes, flush every ${every} MiB`, `${(bytes / 1e6 / seq.wall).toFixed(1)} MB/s`, seq.wall, seq.cpu)
        if (every === 16) {
          const wr = await inPage(() => page.evaluate(([n, m, o]) => window.qcow2Test.idbBench.randomWrites(n, m, o), [name, MIB, RANDOM_OPS] as const))
          row(`IndexedDB: ${RANDOM_OPS} random 4 KiB writes + flush`, `${(RANDOM_OPS / wr.wall).toFixed(0)} IOPS`, wr.wall, wr.cpu)
          const rd = await inPage(() => page.evaluate(([n, m, o]) => window.qcow2Test.idbBench.randomReads(n, m, o), [name, MIB, RANDOM_OPS] as const))
          row(`IndexedDB: ${RANDOM_OPS} random 4 KiB reads (fresh handle)`, `${(RANDOM_OPS / rd.wall).toFixed(0)} IOPS`, rd.wall, rd.cpu)
        }
        await page.evaluate((n) => window.qcow2Test.idbBench.remove(n), name)
      }
      execFileSync("qemu-img", ["create", "-q", "-f", "raw", "bench.raw", `${MIB}M`], { cwd: dir })
      const seq = qemuBench("-f", "raw", "-w", "-t", "none", "-c", String(MIB), "-d", "1", "-s", "1M", "-S", "1M", "--flush-interval=1", "bench.raw")
      row(`qemu-img bench, raw file (-t none): ${MIB} sequential 1 MiB writes, flush every 1 MiB`, `${(bytes / 1e6 / seq.wall).toFixed(1)} MB/s`, seq.wall, seq.cpu)
      const wr = qemuBench("-f", "raw", "-w", "-t", "none", "-c", String(RANDOM_OPS), "-d", "1", "-s", "4k", "-S", "1M", "bench.raw")
      row(`qemu-img bench, raw file (-t none): ${RANDOM_OPS} 4 KiB writes, depth 1`, `${(RANDOM_OPS / wr.wall).toFixed(0)} IOPS`, wr.wall, wr.cpu)
      const rd = qemuBench("-f", "raw", "-t", "none", "-c", String(RANDOM_OPS), "-d", "1", "-s", "4k", "-S", "1M", "bench.raw")
      row(`qemu-img bench, raw file (-t none): ${RANDOM_OPS} 4 KiB reads, depth 1`, `${(RANDOM_OPS / rd.wall).toFixed(0)} IOPS`, rd.wall, rd.cpu)
      console.log(["", "| what | rate | wall | CPU (user+sys) |", ...rows].join("\n"))
    } finally {
      await browser.close()
      await server.close()
    }
  })

  it("cluster compression in Chromium (Web Worker pool, page thread) and qemu-img convert -c of the same data", async () => {
    const mib = Number(process.env.BENCH_COMPRESS_MIB ?? 32)
    fs.writeFileSync(path.join(dir, "mixed.raw"), Buffer.concat(mixedClusters(mib * 16, 65536)))
    await bundlePage(dir)
    const server = await servePage(dir)
    const { browser, page } = await openPage(server.url)
    const rows: Array<string> = []
    try {
      await page.evaluate((m) => window.qcow2Test.compressBench(m, 0, -1), mib)
      for (const [type, name] of [[0, "zlib"], [1, "zstd"]] as const) {
        for (const workers of [0, 1, 2]) {
          const cpu = treeCpu(process.pid)
          const r = await page.evaluate(([m, t, w]) => window.qcow2Test.compressBench(m, t, w), [mib, type, workers] as const)
          const used = treeCpu(process.pid) - cpu
          const what = workers === 0 ? "page thread (PortableClusterCodec)" : `Web Worker pool, ${workers} worker${workers > 1 ? "s" : ""}`
          rows.push(`| ${name}: ${what} | ${((mib * 2 ** 20) / 1e6 / r.seconds).toFixed(1)} MB/s | ${r.seconds.toFixed(2)} s | ${used.toFixed(2)} s | ${((mib * 2 ** 20) / 1e6 / used).toFixed(1)} MB/CPU-s | ratio ${(r.stored / (mib * 2 ** 20)).toFixed(3)} |`)
        }
        const q = qemuTimed("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${name}`, "mixed.raw", `mixed-${name}.qcow2`)
        rows.push(`| ${name}: qemu-img convert -c | ${((mib * 2 ** 20) / 1e6 / q.wall).toFixed(1)} MB/s | ${q.wall.toFixed(2)} s | ${q.cpu.toFixed(2)} s | ${((mib * 2 ** 20) / 1e6 / q.cpu).toFixed(1)} MB/CPU-s | file ${fs.statSync(path.join(dir, `mixed-${name}.qcow2`)).size} B |`)
      }
      console.log(["", `| ${mib} MiB of mixed 64 KiB clusters | rate | wall | CPU (user+sys) | per CPU | |`, ...rows].join("\n"))
    } finally {
      await browser.close()
      await server.close()
    }
  })

  it("bundle size of the browser image stack", async () => {
    const sizes: Array<string> = []
    for (const [what, contents] of [
      ["@qcow2/browser, everything", `export * from "@qcow2/browser"`],
      ["@qcow2/browser, open() only", `export { open } from "@qcow2/browser"`]
    ] as const) {
      // The published files (dist), as a consumer's bundler sees them.
      const result = await build({
        stdin: { contents, resolveDir: import.meta.dirname, loader: "ts" },
        bundle: true,
        platform: "browser",
        format: "esm",
        minify: true,
        write: false,
        metafile: true,
        logLevel: "silent"
      })
      const code = result.outputFiles[0].contents
      expect(Object.keys(result.metafile.inputs).some((p) => p.startsWith("node:"))).toBe(false)
      sizes.push(`| ${what} | ${(code.length / 1024).toFixed(0)} KiB minified | ${(gzipSync(code).length / 1024).toFixed(0)} KiB gzipped |`)
    }
    console.log(["", ...sizes].join("\n"))
  })
})
