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
 * $QCOW2_BENCH_BASE names a baseline build of the CLI that the convert and
 * start-up cases also run, in the same rounds (before/after figures on a
 * machine whose load changes).
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
/** The CLI under test; $QCOW2_BENCH_CLI runs another build (e.g. an older one, for before/after figures) and skips the build. */
const BUNDLE = process.env.QCOW2_BENCH_CLI ?? path.join(CLI_DIR, "dist", "qcow2.mjs")
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
const fresh = (output, cmd, args) => () => {
  fs.rmSync(output, { force: true })
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

/** A fresh 256 MiB LUKS-encrypted qcow2 image, made by qemu-img. */
const makeLuks = (file) =>
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "--object", SECRET, "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=200", file, "256M"])

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
    description: "info on a small image: qcow2 vs qemu-img vs `node -e 0` (median of 11)",
    run: () => {
      const image = smallImage()
      const [tOurs, tQemu, tNode, tBase] = alternateAll(11, [
        () => timeRun(process.execPath, [BUNDLE, "info", image]),
        () => timeRun("qemu-img", ["info", image]),
        () => timeRun(process.execPath, ["-e", "0"]),
        ...(BASE === undefined ? [] : [() => timeRun(process.execPath, [BASE, "info", image])])
      ])
      const named = [["qcow2 info", tOurs], ["qemu-img info", tQemu], ["node -e 0", tNode], ...(tBase === undefined ? [] : [["baseline info", tBase]])]
      return [
        ...timingRows(0, named, []).map(([k, v]) => [k, v.replace(/\(0 MiB\/s, /, "(")]),
        ["qcow2 info − node -e 0", `wall ${((tOurs.wall - tNode.wall) * 1000).toFixed(0)} ms, CPU ${(((tOurs.cpu ?? 0) - (tNode.cpu ?? 0)) * 1000).toFixed(0)} ms`]
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
      const [wOurs, wQemu, rOurs, rQemu, cOurs, cQemu] = alternateAll(3, [
        write("ours", process.execPath, [BUNDLE, "io", ...io("ours", "write -P 171 0 256M")]),
        write("qemu", "qemu-io", io("qemu", "write -P 171 0 256M")),
        () => timeRun(process.execPath, [BUNDLE, "io", ...io("ours", "read -P 171 0 256M")]),
        () => timeRun("qemu-io", io("qemu", "read -P 171 0 256M")),
        fresh(rawOut("ours"), process.execPath, [BUNDLE, ...convertArgs("ours")]),
        fresh(rawOut("qemu"), "qemu-img", convertArgs("qemu"))
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
      for (const who of ["ours", "qemu"]) {
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
console.log(`work dir: ${WORK}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}; ${os.cpus().length} CPUs\n`)
for (const c of CASES) {
  if (wanted.length > 0 && !wanted.includes(c.name)) continue
  console.log(`${c.name}: ${c.description}`)
  const rows = await c.run()
  const width = Math.max(...rows.map(([k]) => k.length))
  for (const [k, v] of rows) console.log(`  ${k.padEnd(width)}  ${v}`)
  console.log("")
}
