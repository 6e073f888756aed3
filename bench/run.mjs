#!/usr/bin/env node
/**
 * Benchmarks, run by hand: `pnpm bench [case …]` (all cases when none given).
 *
 * Every case compares this toolkit with qemu-img in the same run on the
 * same files, so the ratio means something on a shared, noisy machine.
 * Test images are built once with qemu-img and cached in
 * $QCOW2_BENCH_DIR (default: the OS temp dir); delete it to rebuild.
 * $QCOW2_BENCH_CLI names another build of the CLI to measure;
 * $QCOW2_BENCH_RUNS sets how many times each command runs (median taken);
 * $QCOW2_BENCH_BASE names a baseline build of the CLI that the convert,
 * start-up and qcow2 bench cases also run, in the same rounds (before/after
 * figures on a machine whose load changes).
 *
 * To add a case, append to CASES: { name, description, run(ctx) } where
 * run returns rows of [label, value] to print. One file on purpose, though
 * long: every case shares the helpers and the image cache, and a reader
 * sees exactly what is measured against what.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process"
import { randomFillSync } from "node:crypto"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const CLI_DIR = path.join(ROOT, "apps", "cli")
/** The CLI under test; $QCOW2_BENCH_CLI runs another build (e.g. an older one, for before/after figures) and skips the build. */
const BUNDLE = process.env.QCOW2_BENCH_CLI ?? path.join(CLI_DIR, "dist", "bin", "qcow2.cjs")
/** A baseline build run alongside (see the header), or undefined. */
const BASE = process.env.QCOW2_BENCH_BASE
const WORK = process.env.QCOW2_BENCH_DIR ?? path.join(os.tmpdir(), "qcow2-bench")
const MiB = 1024 * 1024
const GiB = 1024 * MiB

// ---- helpers ---------------------------------------------------------------

const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ["ignore", "pipe", "inherit"], ...opts })

const GNU_TIME = fs.existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined

/**
 * One run of a command (stdout discarded): wall-clock seconds and, when GNU
 * time is installed, CPU seconds (user + system), which a busy machine
 * disturbs much less than wall time, and peak resident memory (bytes).
 */
const timeRun = (cmd, args) => {
  const start = performance.now()
  const r = GNU_TIME
    ? spawnSync(GNU_TIME, ["-f", "%U %S %M", cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" })
    : spawnSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" })
  const wall = (performance.now() - start) / 1000
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited with ${r.status}: ${r.stderr}`)
  const last = r.stderr.trim().split("\n").pop() ?? ""
  const [user, sys, kib] = last.split(" ").map(Number)
  const measured = GNU_TIME && Number.isFinite(user) && Number.isFinite(sys)
  return { wall, cpu: measured ? user + sys : undefined, rss: measured && Number.isFinite(kib) ? kib * 1024 : undefined, stdout: r.stdout }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Runs the functions in turn, `n` rounds ($QCOW2_BENCH_RUNS overrides `n`); returns each one's median wall and CPU times and largest peak memory. */
const alternateAll = (runs, fns) => {
  const n = process.env.QCOW2_BENCH_RUNS === undefined ? runs : Number(process.env.QCOW2_BENCH_RUNS)
  const results = fns.map(() => [])
  for (let i = 0; i < n; i++) fns.forEach((f, j) => results[j].push(f()))
  return results.map((rs) => ({
    wall: median(rs.map((r) => r.wall)),
    cpu: rs[0].cpu === undefined ? undefined : median(rs.map((r) => r.cpu)),
    rss: rs[0].rss === undefined ? undefined : Math.max(...rs.map((r) => r.rss)),
    stdouts: rs.map((r) => r.stdout)
  }))
}

/** Runs `a` and `b` alternately `n` times; returns their median wall and CPU times. */
const alternate = (n, a, b) => alternateAll(n, [a, b])

/** A timed run of `cmd` that first deletes `output` (every run writes a new file, as a user's convert would). */
/**
 * A run that writes `output` from scratch: the old file is removed and the
 * page cache written back first (untimed), so that no command pays for the
 * dirty pages the one before it left (writeback throttling made the same
 * qemu-img convert take 0.25 s or 0.75 s depending on what ran just before).
 */
const fresh = (output, cmd, args) => () => {
  fs.rmSync(output, { force: true })
  spawnSync("sync")
  return timeRun(cmd, args)
}

const cpuText = (t) => (t.cpu === undefined ? "" : `, CPU ${fmt(t.cpu)}`) + (t.rss === undefined ? "" : `, peak ${(t.rss / MiB).toFixed(0)} MiB`)

/** Rows for several timed commands: each one's time and throughput, then its ratio against each reference. */
const timingRows = (bytes, named, ratios) => [
  ...named.map(([label, t]) => [label, `${fmt(t.wall)}  (${mbps(bytes, t.wall)}${cpuText(t)})`]),
  ...ratios.map(([label, a, b]) => [
    label,
    `wall ${(a.wall / b.wall).toFixed(2)}x` + (a.cpu !== undefined && b.cpu !== undefined ? `, CPU ${(a.cpu / b.cpu).toFixed(2)}x` : "")
  ])
]

const fmt = (s) => `${s.toFixed(3)} s`
const mbps = (bytes, s) => `${(bytes / MiB / s).toFixed(0)} MiB/s`

/**
 * A raw file of `size` bytes mixing 1 MiB chunks of zeros (left as holes),
 * random bytes and text, in a fixed pseudo-random order; some data chunks
 * carry zero runs inside so 4 KiB zero detection matters. With `dataEvery`
 * n > 1 only every n-th MiB may hold data (a large, sparse-ish image).
 */
const writeMixedRaw = (file, size, dataEvery = 1) => {
  const fd = fs.openSync(file, "w")
  const chunk = Buffer.alloc(MiB)
  const text = Buffer.from(
    "The quick brown fox jumps over the lazy dog; QCOW2 stores guest clusters behind two levels of tables. "
  )
  let x = 12345
  for (let off = 0; off < size; off += MiB) {
    x = (x * 1103515245 + 12345) >>> 0
    const kind = x % 3
    if (kind === 0 || (off / MiB) % dataEvery !== 0) continue
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
    make(file + ".part")
    fs.renameSync(file + ".part", file)
  }
  return file
}

/** The 1 GiB mixed raw image (zero chunks are holes). */
const mixedRaw = () => cached("mixed.raw", (file) => writeMixedRaw(file, GiB))

/** The 1 GiB mixed qcow2 image (64 KiB clusters). */
const mixedImage = () =>
  cached("mixed.qcow2", (file) => {
    sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", mixedRaw(), file])
  })

/** The 1 GiB mixed content as a compressed image (compression_type zlib or zstd), made by qemu-img convert -c. */
const compressedImage = (type) =>
  cached(`mixed-${type}-1g.qcow2`, (file) => {
    sh("qemu-img", ["convert", "-W", "-f", "raw", "-c", "-O", "qcow2", "-o", `compression_type=${type}`, mixedRaw(), file])
  })

/** An 8 GiB raw image whose data (1 MiB chunks, every 4th MiB at most: ~1.3 GiB) is spread over the whole size. */
const sparseRaw8g = () => cached("sparse-8g.raw", (file) => writeMixedRaw(file, 8 * GiB, 4))

/** The 8 GiB sparse-ish content as qcow2 (64 KiB clusters). */
const sparseImage8g = () =>
  cached("sparse-8g.qcow2", (file) => {
    sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", sparseRaw8g(), file])
  })

/** A small qcow2 image for start-up timing. */
const smallImage = () => cached("small.qcow2", (file) => sh("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"]))

/**
 * Converts `image` (format `from`) to `to` with both tools, alternating
 * `runs` times; checks the outputs hold the same guest data (and, for
 * qcow2 outputs, that qemu-img check finds ours clean); returns rows.
 */
const convertPair = (image, from, to, runs) => {
  const ours = path.join(WORK, `out-ours.${to}`)
  const theirs = path.join(WORK, `out-qemu.${to}`)
  const size = Number(JSON.parse(sh("qemu-img", ["info", "-f", from, "--output=json", image]).toString())["virtual-size"])
  const base = path.join(WORK, `out-base.${to}`)
  const args = ["convert", "-f", from, "-O", to, image]
  const [tOurs, tQemu, tBase] = alternateAll(runs, [
    fresh(ours, process.execPath, [BUNDLE, ...args, ours]),
    fresh(theirs, "qemu-img", [...args, theirs]),
    ...(BASE === undefined ? [] : [fresh(base, process.execPath, [BASE, ...args, base])])
  ])
  fs.rmSync(base, { force: true })
  const rows = [
    ["virtual size", `${(size / MiB).toFixed(0)} MiB`],
    ...timingRows(
      size,
      [[`qcow2 convert -O ${to}`, tOurs], [`qemu-img convert -O ${to}`, tQemu], ...(tBase === undefined ? [] : [[`baseline convert -O ${to}`, tBase]])],
      [["qcow2 / qemu-img", tOurs, tQemu], ...(tBase === undefined ? [] : [["baseline / qemu-img", tBase, tQemu]])]
    ),
    ["per GiB (ours, qemu-img)", `${fmt(tOurs.wall / (size / GiB))}, ${fmt(tQemu.wall / (size / GiB))}`],
    ["same guest data", sameImages(ours, theirs, ["-f", to, "-F", to]) ? "yes" : "NO"],
    ...(to === "qcow2" ? [["qemu-img check of ours", checkClean(ours) ? "clean" : "NOT CLEAN"]] : [])
  ]
  fs.rmSync(ours, { force: true })
  fs.rmSync(theirs, { force: true })
  return rows
}

const SECRET = "secret,id=s,data=bench-passphrase"

/**
 * A fresh 256 MiB LUKS-encrypted qcow2 image, made by qemu-img. Tried again
 * when QEMU cannot time its PBKDF2 ("Unable to get accurate CPU usage", on
 * machines with tick-based CPU accounting; see tools/qemu-oracle).
 */
const makeLuks = (file) => {
  const args = ["create", "-q", "-f", "qcow2", "--object", SECRET, "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=200", file, "256M"]
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync("qemu-img", args, { encoding: "utf8" })
    if (r.status === 0) return
    if (attempt === 8 || !r.stderr.includes("Unable to get accurate CPU usage")) throw new Error(`qemu-img ${args.join(" ")}: ${r.stderr}`)
  }
}

const imageOpts = (file) => `driver=qcow2,file.filename=${file},encrypt.key-secret=s`

/**
 * Median request throughput that qemu-io (and `qcow2 io`, which prints the
 * same line) reports for its one request: "256 MiB, 1 ops; … (190.9 MiB/sec …)",
 * which leaves out start-up and opening the image (PBKDF2).
 */
const ioRate = (stdouts) => {
  const rates = stdouts.map((out) => {
    const m = /\(([\d.]+) (bytes|KiB|MiB|GiB)\/sec/.exec(out)
    if (m === null) return NaN
    const scale = { bytes: 1 / MiB, KiB: 1 / 1024, MiB: 1, GiB: 1024 }[m[2]]
    return Number(m[1]) * scale
  })
  return median(rates)
}

/** Whether two images hold the same guest data (qemu-img compare), with extra qemu-img arguments. */
const sameImages = (a, b, extra = []) => spawnSync("qemu-img", ["compare", ...extra, a, b], { stdio: "ignore" }).status === 0

/** Whether qemu-img check finds the image clean. */
const checkClean = (file) => spawnSync("qemu-img", ["check", file], { stdio: "ignore" }).status === 0

const fileSize = (file) => `${(fs.statSync(file).size / MiB).toFixed(1)} MiB`

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


// ---- qcow2 bench / check / compare / serve helpers (random I/O, metadata speed) ----

/** One run with GNU time's peak RSS too (KiB → MiB); undefined without GNU time. */
const timeRunPeak = (cmd, args) => {
  const start = performance.now()
  const r = GNU_TIME
    ? spawnSync(GNU_TIME, ["-f", "%U %S %M", cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" })
    : spawnSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" })
  const wall = (performance.now() - start) / 1000
  if (r.status !== 0 && r.status !== 1) throw new Error(`${cmd} ${args.join(" ")} exited with ${r.status}: ${r.stderr}`)
  const [user, sys, peak] = (r.stderr.trim().split("\n").pop() ?? "").split(" ").map(Number)
  return {
    wall,
    cpu: GNU_TIME && Number.isFinite(user) && Number.isFinite(sys) ? user + sys : undefined,
    peakMiB: GNU_TIME && Number.isFinite(peak) ? peak / 1024 : undefined,
    stdout: r.stdout
  }
}

const peakText = (t) => (t.peakMiB === undefined ? "" : `, peak ${t.peakMiB.toFixed(0)} MiB`)

/** Median of each function's runs, `n` rounds alternating, with peak memory. */
const alternatePeak = (n, fns) => {
  const results = fns.map(() => [])
  for (let i = 0; i < n; i++) fns.forEach((f, j) => results[j].push(f()))
  return results.map((rs) => ({
    wall: median(rs.map((r) => r.wall)),
    cpu: rs[0].cpu === undefined ? undefined : median(rs.map((r) => r.cpu)),
    peakMiB: rs[0].peakMiB === undefined ? undefined : median(rs.map((r) => r.peakMiB)),
    stdouts: rs.map((r) => r.stdout),
    runs: rs
  }))
}

/** A fully allocated 1 GiB qcow2 image (preallocation=full): every cluster is data owned by the image. */
const allocatedImage = () =>
  cached("alloc.qcow2", (file) => sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "preallocation=full", file, "1G"]))

/**
 * qemu-img bench has no random mode; a step of a prime number of 4 KiB
 * blocks (the image has 2^18 of them, so the offsets wrap round and visit
 * every block once per 2^18 requests) scatters the requests over the whole
 * image like random ones, the same sequence for both tools.
 */
const RANDOM_STEP = 104729 * 4096

/** The "Run completed in X seconds." of a bench run: the requests alone, without start-up and open. */
const benchSeconds = (stdout) => Number(/Run completed in ([\d.]+) seconds/.exec(stdout)?.[1] ?? NaN)

/** Rows comparing qcow2 bench and qemu-img bench runs of `count` requests (and the baseline build's, when run). */
const benchRows = (label, count, ours, theirs, base) => {
  const rate = (t) => median(t.stdouts.map((out) => count / benchSeconds(out)))
  const rOurs = rate(ours)
  const rQemu = rate(theirs)
  const baseRows = (b) => {
    const rBase = rate(b)
    return [
      [`${label}: baseline qcow2 bench`, `${rBase.toFixed(0)} req/s (process ${fmt(b.wall)}${cpuText(b)}${peakText(b)})`],
      [
        `${label}: time ratio baseline / qemu-img`,
        `requests ${(rQemu / rBase).toFixed(2)}x, process wall ${(b.wall / theirs.wall).toFixed(2)}x` +
          (b.cpu !== undefined && theirs.cpu !== undefined ? `, CPU ${(b.cpu / theirs.cpu).toFixed(2)}x` : "")
      ]
    ]
  }
  return [
    ...(base === undefined ? [] : baseRows(base)),
    [`${label}: qcow2 bench`, `${rOurs.toFixed(0)} req/s (process ${fmt(ours.wall)}${cpuText(ours)}${peakText(ours)})`],
    [`${label}: qemu-img bench`, `${rQemu.toFixed(0)} req/s (process ${fmt(theirs.wall)}${cpuText(theirs)}${peakText(theirs)})`],
    [
      `${label}: time ratio qcow2 / qemu-img`,
      `requests ${(rQemu / rOurs).toFixed(2)}x, process wall ${(ours.wall / theirs.wall).toFixed(2)}x` +
        (ours.cpu !== undefined && theirs.cpu !== undefined ? `, CPU ${(ours.cpu / theirs.cpu).toFixed(2)}x` : "")
    ]
  ]
}

/** Random 4 KiB requests at depth 1 and 32 through `qcow2 bench` and `qemu-img bench`, same flags, same image. */
const randomBenchCase = (write, runs, count) => {
  const image = allocatedImage()
  const rows = []
  for (const depth of [1, 32]) {
    const args = ["bench", ...(write ? ["-w"] : []), "-c", String(count), "-d", String(depth), "-s", "4096", "-S", String(RANDOM_STEP), image]
    const [ours, theirs, base] = alternatePeak(Number(process.env.QCOW2_BENCH_RUNS ?? runs), [
      () => timeRunPeak(process.execPath, [BUNDLE, ...args]),
      () => timeRunPeak("qemu-img", args),
      ...(BASE === undefined ? [] : [() => timeRunPeak(process.execPath, [BASE, ...args])])
    ])
    rows.push(...benchRows(`qd ${depth}`, count, ours, theirs, base))
  }
  if (write) rows.push(["qemu-img check after the writes", checkClean(image) ? "clean" : "NOT CLEAN"])
  return rows
}

/** Resolves once something accepts connections on 127.0.0.1:`port` (a probe connection, closed at once). */
const waitForPort = async (port, child) => {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode} before listening`)
    const up = await new Promise((resolve) => {
      const probe = net.connect(port, "127.0.0.1", () => {
        probe.destroy()
        resolve(true)
      })
      probe.on("error", () => resolve(false))
    })
    if (up) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`nothing listens on port ${port}`)
}

/** CPU seconds (user + system) and peak RSS (MiB) of a running process, from /proc. */
const procUsage = (pid) => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  const ticks = Number(fields[11]) + Number(fields[12])
  const hwm = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))
  return { cpu: ticks / 100, peakMiB: hwm === null ? undefined : Number(hwm[1]) / 1024 }
}

/**
 * Starts an NBD server (`cmd args`, listening on `port`), runs
 * `qemu-img bench -f raw nbd://127.0.0.1:PORT` for each of `runs`, stops it
 * with SIGTERM; returns each run's request rate and the server's CPU time
 * and peak memory over the whole session.
 */
const nbdSession = async (cmd, args, port, runs, count) => {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"] })
  try {
    await waitForPort(port, child)
    const rates = runs.map(({ depth, write }) => {
      const out = sh("qemu-img", ["bench", "-f", "raw", ...(write ? ["-w"] : []), "-c", String(count), "-d", String(depth), "-s", "4096", "-S", String(RANDOM_STEP), `nbd://127.0.0.1:${port}`]).toString()
      return count / benchSeconds(out)
    })
    return { rates, ...procUsage(child.pid) }
  } finally {
    const exited = new Promise((r) => child.once("exit", r))
    child.kill("SIGTERM")
    await exited
  }
}

// ---- cases -----------------------------------------------------------------

const CASES = [
  {
    name: "convert-raw",
    description: "1 GiB mixed qcow2 → raw: qcow2 CLI vs qemu-img (median of 5)",
    run: () => convertPair(mixedImage(), "qcow2", "raw", 5)
  },
  {
    name: "convert-qcow2",
    description: "1 GiB mixed raw → qcow2: qcow2 CLI vs qemu-img (median of 5)",
    run: () => convertPair(mixedRaw(), "raw", "qcow2", 5)
  },
  {
    name: "convert-q2q",
    description: "1 GiB mixed qcow2 → qcow2: qcow2 CLI vs qemu-img (median of 5)",
    run: () => convertPair(mixedImage(), "qcow2", "qcow2", 5)
  },
  {
    name: "convert-8g",
    description: "8 GiB sparse-ish image (~1.3 GiB data spread over it): qcow2 → raw, raw → qcow2, qcow2 → qcow2 (median of 3)",
    run: () => [
      ...convertPair(sparseImage8g(), "qcow2", "raw", 3).map(([k, v]) => [`qcow2→raw: ${k}`, v]),
      ...convertPair(sparseRaw8g(), "raw", "qcow2", 3).map(([k, v]) => [`raw→qcow2: ${k}`, v]),
      ...convertPair(sparseImage8g(), "qcow2", "qcow2", 3).map(([k, v]) => [`qcow2→qcow2: ${k}`, v])
    ]
  },
  {
    name: "convert-zlib",
    description: "1 GiB mixed zlib-compressed qcow2 → raw: qcow2 CLI vs qemu-img (median of 3)",
    run: () => convertPair(compressedImage("zlib"), "qcow2", "raw", 3)
  },
  {
    name: "convert-zstd",
    description: "1 GiB mixed zstd-compressed qcow2 → raw: qcow2 CLI vs qemu-img (median of 3)",
    run: () => convertPair(compressedImage("zstd"), "qcow2", "raw", 3)
  },
  {
    name: "startup",
    description: "info on a small image: qcow2 (the bin, and the ./qcow2 wrapper) vs qemu-img vs `node -e 0` (median of 21)",
    run: () => {
      const image = smallImage()
      const [tOurs, tQemu, tNode, tWrapper, tBase] = alternateAll(21, [
        () => timeRun(process.execPath, [BUNDLE, "info", image]),
        () => timeRun("qemu-img", ["info", image]),
        () => timeRun(process.execPath, ["-e", "0"]),
        () => timeRun(path.join(ROOT, "qcow2"), ["info", image]),
        ...(BASE === undefined ? [] : [() => timeRun(process.execPath, [BASE, "info", image])])
      ])
      const named = [
        ["qcow2 info", tOurs],
        ["./qcow2 info (wrapper)", tWrapper],
        ["qemu-img info", tQemu],
        ["node -e 0", tNode],
        ...(tBase === undefined ? [] : [["baseline info", tBase]])
      ]
      const overNode = (t) => `wall ${((t.wall - tNode.wall) * 1000).toFixed(0)} ms, CPU ${(((t.cpu ?? 0) - (tNode.cpu ?? 0)) * 1000).toFixed(0)} ms`
      return [
        ...timingRows(0, named, []).map(([k, v]) => [k, v.replace(/\(0 MiB\/s, /, "(")]),
        ["qcow2 info − node -e 0", overNode(tOurs)],
        ["./qcow2 info − node -e 0", overNode(tWrapper)]
      ]
    }
  },
  {
    name: "convert-compress",
    description: "1 GiB mixed raw → compressed qcow2 (zlib, zstd): qcow2 -c vs qemu-img -c and -c -W (median of 3)",
    run: () => {
      const raw = mixedRaw()
      const rows = []
      for (const type of ["zlib", "zstd"]) {
        const out = (who) => path.join(WORK, `out-${who}-${type}.qcow2`)
        const args = ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, raw]
        const [tOurs, tQemu, tQemuW, tBase] = alternateAll(3, [
          fresh(out("ours"), process.execPath, [BUNDLE, ...args, out("ours")]),
          fresh(out("qemu"), "qemu-img", [...args, out("qemu")]),
          fresh(out("qemuW"), "qemu-img", ["convert", "-W", ...args.slice(1), out("qemuW")]),
          ...(BASE === undefined ? [] : [fresh(out("base"), process.execPath, [BASE, ...args, out("base")])])
        ])
        if (tBase !== undefined) rows.push(...timingRows(GiB, [[`${type}: baseline convert -c`, tBase]], [[`${type}: baseline / qemu-img -c -W`, tBase, tQemuW]]))
        rows.push(
          ...timingRows(
            GiB,
            [
              [`${type}: qcow2 convert -c`, tOurs],
              [`${type}: qemu-img convert -c`, tQemu],
              [`${type}: qemu-img convert -c -W`, tQemuW]
            ],
            [
              [`${type}: qcow2 / qemu-img -c`, tOurs, tQemu],
              [`${type}: qcow2 / qemu-img -c -W`, tOurs, tQemuW]
            ]
          ),
          [`${type}: image sizes (ours, qemu-img, -W)`, `${fileSize(out("ours"))}, ${fileSize(out("qemu"))}, ${fileSize(out("qemuW"))}`],
          [`${type}: guest data identical to the source`, sameImages(out("ours"), raw, ["-F", "raw"]) ? "yes" : "NO"],
          [`${type}: qemu-img check of ours`, checkClean(out("ours")) ? "clean" : "NOT CLEAN"]
        )
        for (const who of ["ours", "qemu", "qemuW", "base"]) fs.rmSync(out(who), { force: true })
      }
      return rows
    }
  },
  {
    name: "encrypted",
    description: "LUKS (aes-xts) qcow2: write 256 MiB, read it back, convert it to raw: qcow2 vs qemu-io / qemu-img (median of 3)",
    run: () => {
      const size = 256 * MiB
      const img = (who) => path.join(WORK, `luks-${who}.qcow2`)
      const rawOut = (who) => path.join(WORK, `luks-${who}.raw`)
      const io = (who, command) => ["--object", SECRET, "--image-opts", "-c", command, imageOpts(img(who))]
      const write = (who, cmd, args) => () => {
        fs.rmSync(img(who), { force: true })
        makeLuks(img(who))
        return timeRun(cmd, args)
      }
      const convertArgs = (who) => ["convert", "--object", SECRET, "--image-opts", imageOpts(img("qemu")), "-O", "raw", rawOut(who)]
      const [wOurs, wQemu, rOurs, rQemu, cOurs, cQemu, wBase, rBase, cBase] = alternateAll(3, [
        write("ours", process.execPath, [BUNDLE, "io", ...io("ours", "write -P 171 0 256M")]),
        write("qemu", "qemu-io", io("qemu", "write -P 171 0 256M")),
        () => timeRun(process.execPath, [BUNDLE, "io", ...io("ours", "read -P 171 0 256M")]),
        () => timeRun("qemu-io", io("qemu", "read -P 171 0 256M")),
        fresh(rawOut("ours"), process.execPath, [BUNDLE, ...convertArgs("ours")]),
        fresh(rawOut("qemu"), "qemu-img", convertArgs("qemu")),
        ...(BASE === undefined
          ? []
          : [
              write("base", process.execPath, [BASE, "io", ...io("base", "write -P 171 0 256M")]),
              () => timeRun(process.execPath, [BASE, "io", ...io("base", "read -P 171 0 256M")]),
              fresh(rawOut("base"), process.execPath, [BASE, ...convertArgs("base")])
            ])
      ])
      const same =
        sameImages(imageOpts(img("ours")), imageOpts(img("qemu")), ["--object", SECRET, "--image-opts"]) &&
        sameImages(rawOut("ours"), rawOut("qemu"), ["-f", "raw", "-F", "raw"])
      const rows = [
        ...timingRows(
          size,
          [
            ["qcow2 io write 256M (wall, incl. start and unlock)", wOurs],
            ["qemu-io write 256M", wQemu],
            ["qcow2 io read 256M", rOurs],
            ["qemu-io read 256M", rQemu],
            ["qcow2 convert → raw", cOurs],
            ["qemu-img convert → raw", cQemu]
          ],
          [
            ["write: qcow2 / qemu-io", wOurs, wQemu],
            ["read: qcow2 / qemu-io", rOurs, rQemu],
            ["convert: qcow2 / qemu-img", cOurs, cQemu]
          ]
        ),
        ["request rate write (ours, qemu-io)", `${ioRate(wOurs.stdouts).toFixed(0)}, ${ioRate(wQemu.stdouts).toFixed(0)} MiB/s`],
        ["request rate read (ours, qemu-io)", `${ioRate(rOurs.stdouts).toFixed(0)}, ${ioRate(rQemu.stdouts).toFixed(0)} MiB/s`],
        ["images and raw outputs identical", same ? "yes" : "NO"]
      ]
      if (wBase !== undefined) {
        rows.push(
          ...timingRows(
            size,
            [
              ["baseline io write 256M", wBase],
              ["baseline io read 256M", rBase],
              ["baseline convert → raw", cBase]
            ],
            [
              ["write: baseline / qemu-io", wBase, wQemu],
              ["read: baseline / qemu-io", rBase, rQemu],
              ["convert: baseline / qemu-img", cBase, cQemu]
            ]
          )
        )
      }
      for (const who of ["ours", "qemu", "base"]) {
        fs.rmSync(img(who), { force: true })
        fs.rmSync(rawOut(who), { force: true })
      }
      return rows
    }
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
  },
  {
    name: "bench-read",
    description: "random 4 KiB reads, qd 1 and 32, allocated 1 GiB image: qcow2 bench vs qemu-img bench (threads), same flags (median of 3)",
    run: () => randomBenchCase(false, 3, 100000)
  },
  {
    name: "bench-write",
    description: "random 4 KiB writes into allocated clusters, qd 1 and 32: qcow2 bench -w vs qemu-img bench -w (threads), same flags (median of 3)",
    run: () => randomBenchCase(true, 3, 100000)
  },
  {
    name: "check-compare",
    description: "check of the 1 GiB mixed qcow2, compare of it with its raw source: qcow2 vs qemu-img, with `info` as the start-up floor (median of 5)",
    run: () => {
      const image = mixedImage()
      const raw = mixedRaw()
      const [cOurs, cQemu, mOurs, mQemu, iOurs, iQemu] = alternatePeak(5, [
        () => timeRunPeak(process.execPath, [BUNDLE, "check", image]),
        () => timeRunPeak("qemu-img", ["check", image]),
        () => timeRunPeak(process.execPath, [BUNDLE, "compare", image, raw]),
        () => timeRunPeak("qemu-img", ["compare", image, raw]),
        () => timeRunPeak(process.execPath, [BUNDLE, "info", image]),
        () => timeRunPeak("qemu-img", ["info", image])
      ])
      const row = (label, t) => [label, `${fmt(t.wall)}${cpuText(t)}${peakText(t)}`]
      const ratio = (label, a, b) => [
        label,
        `wall ${(a.wall / b.wall).toFixed(2)}x` + (a.cpu !== undefined && b.cpu !== undefined ? `, CPU ${(a.cpu / b.cpu).toFixed(2)}x` : "")
      ]
      const less = (a, b) => ({ wall: Math.max(0, a.wall - b.wall), cpu: a.cpu === undefined || b.cpu === undefined ? undefined : Math.max(0, a.cpu - b.cpu) })
      return [
        row("qcow2 check", cOurs),
        row("qemu-img check", cQemu),
        ratio("check: qcow2 / qemu-img", cOurs, cQemu),
        row("qcow2 compare (qcow2 vs raw)", mOurs),
        row("qemu-img compare", mQemu),
        ratio("compare: qcow2 / qemu-img", mOurs, mQemu),
        row("qcow2 info (start-up floor)", iOurs),
        row("qemu-img info", iQemu),
        row("qcow2 check beyond info", less(cOurs, iOurs)),
        row("qcow2 compare beyond info", less(mOurs, iOurs))
      ]
    }
  },
  {
    name: "nbd",
    description: "qemu-img bench -f raw nbd://… random 4 KiB reads and writes, qd 1 and 32: qcow2 serve vs qemu-nbd on the allocated 1 GiB image (median of 3 sessions)",
    run: async () => {
      const image = allocatedImage()
      const port = 10809 + 1000 + (process.pid % 1000)
      const runs = [
        { depth: 1, write: false },
        { depth: 1, write: true },
        { depth: 32, write: false },
        { depth: 32, write: true }
      ]
      const count = 20000
      const ours = []
      const theirs = []
      for (let i = 0; i < 3; i++) {
        ours.push(await nbdSession(process.execPath, [BUNDLE, "serve", "-t", "-p", String(port), "-f", "qcow2", image], port, runs, count))
        theirs.push(await nbdSession("qemu-nbd", ["-t", "-p", String(port), "-f", "qcow2", image], port, runs, count))
      }
      const rows = runs.map(({ depth, write }, j) => {
        const a = median(ours.map((s) => s.rates[j]))
        const b = median(theirs.map((s) => s.rates[j]))
        return [`${write ? "writes" : "reads"} qd ${depth}`, `qcow2 serve ${a.toFixed(0)} req/s, qemu-nbd ${b.toFixed(0)} req/s, time ratio ${(b / a).toFixed(2)}x`]
      })
      const usage = (ss) => `CPU ${fmt(median(ss.map((s) => s.cpu)))}, peak ${median(ss.map((s) => s.peakMiB ?? NaN)).toFixed(0)} MiB`
      return [...rows, ["server per session (qcow2 serve)", usage(ours)], ["server per session (qemu-nbd)", usage(theirs)], ["qemu-img check after the writes", checkClean(image) ? "clean" : "NOT CLEAN"]]
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
if (process.env.QCOW2_BENCH_CLI === undefined) {
  console.log(`building ${path.relative(ROOT, BUNDLE)} …`)
  sh(process.execPath, ["build.mjs"], { cwd: CLI_DIR })
} else {
  console.log(`CLI under test: ${BUNDLE}`)
}
// A build copied out of the repository cannot resolve koffi (the bundle's one
// external): it then runs without SEEK_DATA/SEEK_HOLE (a raw file's holes are
// read and scanned as data), page-cache reads and writes on the loop's thread,
// hole punching and locks, and measures something else than an installed CLI.
for (const bundle of [BUNDLE, BASE].filter((b) => b !== undefined)) {
  try {
    createRequire(bundle).resolve("koffi")
  } catch {
    console.log(`warning: ${bundle} cannot load koffi (not under a node_modules with it): its figures are not an installed CLI's`)
  }
}
// NODE_EXTRA_CA_CERTS makes every Node process read and parse that CA
// bundle as it starts, TLS or not (~70 ms on this project's machine, where
// the sandbox sets it: `node -e 0` 0.11 s with it, 0.04 s without).
// Nothing measured here uses TLS and qemu-img never reads it, so the runs
// go without it unless $QCOW2_BENCH_KEEP_ENV is set.
if (process.env.NODE_EXTRA_CA_CERTS !== undefined && process.env.QCOW2_BENCH_KEEP_ENV === undefined) {
  console.log(`NODE_EXTRA_CA_CERTS is set (${process.env.NODE_EXTRA_CA_CERTS}): cleared for the runs (each Node start would parse it); QCOW2_BENCH_KEEP_ENV=1 keeps it`)
  delete process.env.NODE_EXTRA_CA_CERTS
}
console.log(`work dir: ${WORK}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}; ${os.cpus().length} CPUs\n`)
for (const c of CASES) {
  if (wanted.length > 0 && !wanted.includes(c.name)) continue
  console.log(`${c.name}: ${c.description}`)
  const rows = await c.run()
  const width = Math.max(...rows.map(([k]) => k.length))
  for (const [k, v] of rows) console.log(`  ${k.padEnd(width)}  ${v}`)
  console.log("")
}
