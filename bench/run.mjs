#!/usr/bin/env node
/**
 * Benchmarks, run by hand: `pnpm bench [case …]` (all cases when none given).
 *
 * Every case compares this toolkit with qemu-img in the same run on the
 * same files, so the ratio means something on a shared, noisy machine.
 * Test images are built once with qemu-img and cached in
 * $QCOW2_BENCH_DIR (default: the OS temp dir); delete it to rebuild.
 *
 * To add a case, append to CASES: { name, description, run(ctx) } where
 * run returns rows of [label, value] to print.
 */
import { execFileSync, spawnSync } from "node:child_process"
import { randomFillSync } from "node:crypto"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const CLI_DIR = path.join(ROOT, "apps", "cli")
const BUNDLE = path.join(CLI_DIR, "dist", "qcow2.mjs")
const WORK = process.env.QCOW2_BENCH_DIR ?? path.join(os.tmpdir(), "qcow2-bench")
const MiB = 1024 * 1024
const GiB = 1024 * MiB

// ---- helpers ---------------------------------------------------------------

const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ["ignore", "pipe", "inherit"], ...opts })

const GNU_TIME = fs.existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined

/**
 * One run of a command (stdout discarded): wall-clock seconds and, when GNU
 * time is installed, CPU seconds (user + system), which a busy machine
 * disturbs much less than wall time.
 */
const timeRun = (cmd, args) => {
  const start = performance.now()
  const r = GNU_TIME
    ? spawnSync(GNU_TIME, ["-f", "%U %S", cmd, ...args], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" })
    : spawnSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" })
  const wall = (performance.now() - start) / 1000
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited with ${r.status}: ${r.stderr}`)
  const last = r.stderr.trim().split("\n").pop() ?? ""
  const [user, sys] = last.split(" ").map(Number)
  return { wall, cpu: GNU_TIME && Number.isFinite(user) && Number.isFinite(sys) ? user + sys : undefined }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Runs `a` and `b` alternately `n` times; returns their median wall and CPU times. */
const alternate = (n, a, b) => {
  const ra = []
  const rb = []
  for (let i = 0; i < n; i++) {
    ra.push(a())
    rb.push(b())
  }
  const summary = (rs) => ({
    wall: median(rs.map((r) => r.wall)),
    cpu: rs[0].cpu === undefined ? undefined : median(rs.map((r) => r.cpu))
  })
  return [summary(ra), summary(rb)]
}

const fmt = (s) => `${s.toFixed(3)} s`
const mbps = (bytes, s) => `${(bytes / MiB / s).toFixed(0)} MiB/s`

/**
 * A raw file of `size` bytes mixing 1 MiB chunks of zeros (left as holes),
 * random bytes and text, in a fixed pseudo-random order; some data chunks
 * carry zero runs inside so 4 KiB zero detection matters.
 */
const writeMixedRaw = (file, size) => {
  const fd = fs.openSync(file, "w")
  const chunk = Buffer.alloc(MiB)
  const text = Buffer.from(
    "The quick brown fox jumps over the lazy dog; QCOW2 stores guest clusters behind two levels of tables. "
  )
  let x = 12345
  for (let off = 0; off < size; off += MiB) {
    x = (x * 1103515245 + 12345) >>> 0
    const kind = x % 3
    if (kind === 0) continue
    if (kind === 1) randomFillSync(chunk)
    else for (let i = 0; i < MiB; i += text.length) text.copy(chunk, i, 0, Math.min(text.length, MiB - i))
    if ((x >>> 8) % 4 === 0) chunk.fill(0, 256 * 1024, 512 * 1024)
    fs.writeSync(fd, chunk, 0, MiB, off)
  }
  fs.ftruncateSync(fd, size)
  fs.closeSync(fd)
}

const cached = (name, make) => {
  const file = path.join(WORK, name)
  if (!fs.existsSync(file)) {
    console.log(`  building ${name} …`)
    make(file)
  }
  return file
}

/** The 1 GiB mixed qcow2 image (64 KiB clusters). */
const mixedImage = () =>
  cached("mixed.qcow2", (file) => {
    const raw = path.join(WORK, "mixed.raw")
    writeMixedRaw(raw, GiB)
    sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, file])
    fs.rmSync(raw)
  })

/** A 256 MiB zlib-compressed image of the first part of the mixed content. */
const compressedImage = () =>
  cached("mixed-zlib.qcow2", (file) => {
    const raw = path.join(WORK, "mixed-small.raw")
    writeMixedRaw(raw, 256 * MiB)
    sh("qemu-img", ["convert", "-f", "raw", "-c", "-O", "qcow2", raw, file])
    fs.rmSync(raw)
  })

/** Converts `image` to raw with both tools, checks the outputs agree, returns timing rows. */
const convertCase = (image, runs) => {
  const ours = path.join(WORK, "out-ours.raw")
  const theirs = path.join(WORK, "out-qemu.raw")
  const size = Number(JSON.parse(sh("qemu-img", ["info", "--output=json", image]).toString())["virtual-size"])
  const [tOurs, tQemu] = alternate(
    runs,
    () => timeRun(process.execPath, [BUNDLE, "convert", "-O", "raw", image, ours]),
    () => timeRun("qemu-img", ["convert", "-O", "raw", image, theirs])
  )
  const same = spawnSync("qemu-img", ["compare", "-f", "raw", "-F", "raw", ours, theirs], { stdio: "ignore" }).status === 0
  fs.rmSync(ours, { force: true })
  fs.rmSync(theirs, { force: true })
  const cpu = (t) => (t.cpu === undefined ? "" : `, CPU ${fmt(t.cpu)}`)
  return [
    ["virtual size", `${(size / MiB).toFixed(0)} MiB`],
    ["qcow2 convert -O raw", `${fmt(tOurs.wall)}  (${mbps(size, tOurs.wall)}${cpu(tOurs)})`],
    ["qemu-img convert -O raw", `${fmt(tQemu.wall)}  (${mbps(size, tQemu.wall)}${cpu(tQemu)})`],
    ["wall ratio (qcow2 / qemu-img)", `${(tOurs.wall / tQemu.wall).toFixed(2)}x`],
    ...(tOurs.cpu !== undefined && tQemu.cpu !== undefined ? [["CPU ratio (qcow2 / qemu-img)", `${(tOurs.cpu / tQemu.cpu).toFixed(2)}x`]] : []),
    ["outputs identical", same ? "yes" : "NO"]
  ]
}

let libPromise
/** bench/lib-reads.ts bundled with esbuild, resolving packages from apps/cli. */
const lib = () => {
  libPromise ??= (async () => {
    const require = createRequire(path.join(CLI_DIR, "package.json"))
    const { build } = require("esbuild")
    const out = path.join(WORK, "lib-reads.mjs")
    await build({
      entryPoints: [path.join(ROOT, "bench", "lib-reads.ts")],
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      outfile: out,
      conditions: ["@qcow2/source"],
      nodePaths: [path.join(CLI_DIR, "node_modules")],
      banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
      logLevel: "warning"
    })
    return import(pathToFileURL(out).href)
  })()
  return libPromise
}

// ---- cases -----------------------------------------------------------------

const CASES = [
  {
    name: "convert-raw",
    description: "1 GiB mixed qcow2 → raw: qcow2 CLI vs qemu-img (median of 5)",
    run: () => convertCase(mixedImage(), 5)
  },
  {
    name: "convert-zlib",
    description: "256 MiB zlib-compressed qcow2 → raw: qcow2 CLI vs qemu-img (median of 3)",
    run: () => convertCase(compressedImage(), 3)
  },
  {
    name: "random-reads",
    description: "random 4 KiB reads through @qcow2/image on the mixed image (3 s each)",
    run: async () => {
      const image = mixedImage()
      const { randomReads } = await lib()
      const rows = []
      for (const depth of [1, 32]) {
        const r = await randomReads(image, 4096, depth, 3)
        rows.push([`queue depth ${depth}`, `${Math.round(r.reads / r.seconds)} reads/s`])
      }
      return rows
    }
  }
]

// ---- main ------------------------------------------------------------------

const wanted = process.argv.slice(2)
const unknown = wanted.filter((w) => !CASES.some((c) => c.name === w))
if (unknown.length > 0) {
  console.error(`unknown case(s): ${unknown.join(", ")}; known: ${CASES.map((c) => c.name).join(", ")}`)
  process.exit(2)
}
fs.mkdirSync(WORK, { recursive: true })
console.log(`building ${path.relative(ROOT, BUNDLE)} …`)
sh(process.execPath, ["build.mjs"], { cwd: CLI_DIR })
console.log(`work dir: ${WORK}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}; ${os.cpus().length} CPUs\n`)
for (const c of CASES) {
  if (wanted.length > 0 && !wanted.includes(c.name)) continue
  console.log(`${c.name}: ${c.description}`)
  const rows = await c.run()
  const width = Math.max(...rows.map(([k]) => k.length))
  for (const [k, v] of rows) console.log(`  ${k.padEnd(width)}  ${v}`)
  console.log("")
}
