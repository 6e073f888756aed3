/**
 * checkQcow2 against `qemu-img check` (QEMU 7.2) on images made by
 * qemu-img/qemu-io and damaged on purpose: the counters, exit-code class
 * and messages must agree, and after our repair (-r leaks / -r all) of one
 * copy, qemu-img must judge it as it judges its own repair of another copy.
 *
 * Over 450 lines on purpose: one catalogue of damage cases, all sharing the
 * image-making and comparison harness at the top.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { runQemu } from "@qcow2/qemu-oracle"
import { describe, expect, it } from "vitest"
import { Effect } from "effect"
import { openNodeFile } from "@qcow2/storage-node"
import { type CheckError, type CheckResult, rebuildRefcounts } from "../src/index.js"
import { type Counters, countersFromJson, ourCheckResult, putU32, putU64, readAt, scratch, sh, u64, writeAt } from "./files.js"

const tmp = scratch("qcow2-check-")


const LUKS_SECRET = ["--object", "secret,id=s,data=x"]

interface Made {
  readonly file: string
  readonly luks?: boolean
}

/** Arguments naming the image for qemu-img/qemu-io (LUKS images need the secret). */
const imageArgs = (m: Made): Array<string> =>
  m.luks ? [...LUKS_SECRET, "--image-opts", `driver=qcow2,file.filename=${m.file},encrypt.key-secret=s`] : [m.file]

const create = (name: string, size: string, opts: string, extra: ReadonlyArray<string> = []): Made => {
  const file = tmp(name)
  sh("qemu-img", ["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), ...extra, file, size])
  return { file }
}

/** Creates a LUKS image with fast key slots (QEMU's PBKDF2 timing failure is retried by runQemu). */
const createLuks = (file: string, size: string): void => {
  runQemu("qemu-img", ["create", "-q", "-f", "qcow2", ...LUKS_SECRET, "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", file, size])
}

const io = (m: Made, ...cmds: ReadonlyArray<string>): void => {
  sh("qemu-io", [...cmds.flatMap((c) => ["-c", c]), ...imageArgs(m)])
}

// ---- reading and patching the file ----------------------------------------------------------




const OFFSET_MASK = 0x00fffffffffffe00n

interface Layout {
  readonly clusterSize: number
  readonly refcountOrder: number
  readonly l1Offset: number
  readonly reftableOffset: number
  readonly l2EntryBytes: number
}

const layout = (file: string): Layout => {
  const h = readAt(file, 0, 112)
  const version = h.readUInt32BE(4)
  const incompat = version >= 3 ? h.readBigUInt64BE(72) : 0n
  return {
    clusterSize: 2 ** h.readUInt32BE(20),
    refcountOrder: version >= 3 ? h.readUInt32BE(96) : 4,
    l1Offset: Number(h.readBigUInt64BE(40)),
    reftableOffset: Number(h.readBigUInt64BE(48)),
    l2EntryBytes: (incompat & 16n) !== 0n ? 16 : 8
  }
}

const l1Entry = (file: string, i = 0): bigint => u64(file, layout(file).l1Offset + i * 8)
const l2Offset = (file: string, i = 0): number => Number(l1Entry(file, i) & OFFSET_MASK)
const l2EntryAt = (file: string, index: number, l1Index = 0): number => l2Offset(file, l1Index) + index * layout(file).l2EntryBytes
const l2Entry = (file: string, index: number): bigint => u64(file, l2EntryAt(file, index))

/** Where the refcount of `cluster` lives: byte offset in the file, bit shift, width. */
const refcountSlot = (file: string, cluster: number) => {
  const l = layout(file)
  const bits = 1 << l.refcountOrder
  const perBlock = (l.clusterSize * 8) / bits
  const block = Number(u64(file, l.reftableOffset + Math.floor(cluster / perBlock) * 8) & ~0x1ffn)
  const bitPos = (cluster % perBlock) * bits
  return { block, bits, byte: block + Math.floor(bitPos / 8), bitPos }
}

const setRefcount = (file: string, cluster: number, value: bigint): void => {
  const { bits, byte, bitPos } = refcountSlot(file, cluster)
  if (bits >= 8) {
    const hexText = value.toString(16).padStart(bits / 4, "0")
    writeAt(file, byte, Buffer.from(hexText, "hex"))
    return
  }
  const shift = bitPos % 8
  const mask = ((1 << bits) - 1) << shift
  const old = readAt(file, byte, 1)[0]!
  writeAt(file, byte, Buffer.from([(old & ~mask) | (Number(value) << shift)]))
}

const clusterOf = (file: string, offset: number | bigint): number => Math.floor(Number(offset) / layout(file).clusterSize)

// ---- running both checks --------------------------------------------------------------------

interface Outcome {
  /** qemu-img's exit code (0 clean, 1 error, 2 corrupt, 3 leaks). */
  readonly exit: number
  /** The counters, when a result was reported. */
  readonly counters: Counters | undefined
  readonly messages: ReadonlyArray<string>
}


const countersOf = (r: CheckResult): Counters => {
  const { messages: _messages, ...counters } = r
  return counters
}

const exitClass = (c: Counters): number => (c.checkErrors > 0 ? 1 : c.corruptions > 0 ? 2 : c.leaks > 0 ? 3 : 0)

/** Lines qemu-img prints that are not findings of the check itself. */
const notFinding = (line: string): boolean =>
  line === "" || line.startsWith("Check failed") || line.startsWith("qcow2: Marking image as corrupt") || line.startsWith("warning:")

const qemuCheck = (m: Made, repair?: "leaks" | "all"): Outcome => {
  const r = spawnSync("qemu-img", ["check", "--output=json", ...(repair ? ["-r", repair] : []), ...imageArgs(m)], {
    encoding: "utf8",
    maxBuffer: 1 << 28
  })
  const j = r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, number>) : undefined
  const counters: Counters | undefined = j && countersFromJson(j)
  const messages = r.stderr
    .split("\n")
    .map((l) => l.replace(/^qemu-img: /, ""))
    .filter((l) => !notFinding(l))
  return { exit: r.status ?? -1, counters, messages }
}

const ourCheck = async (m: Made, repair?: "leaks" | "all"): Promise<Outcome> => {
  const r = await ourCheckResult(m.file, repair)
  if (r._tag === "Failure") {
    const e: CheckError = r.failure
    if (e.reason !== "Aborted") throw e
    return { exit: 1, counters: undefined, messages: e.messages.filter((l) => !notFinding(l)) }
  }
  const counters = countersOf(r.success)
  return { exit: exitClass(counters), counters, messages: r.success.messages.filter((l) => !notFinding(l)) }
}

const copy = (m: Made, suffix: string): Made => {
  const file = `${m.file}.${suffix}`
  fs.copyFileSync(m.file, file)
  return { ...m, file }
}

/**
 * The whole comparison for one image: plain check; then for each repair
 * mode, our repair of one copy against qemu-img's repair of another, and a
 * plain qemu-img check of both repaired copies.
 */
const compareWithQemu = async (
  m: Made,
  options: {
    readonly messages?: boolean
    readonly repairs?: ReadonlyArray<"leaks" | "all">
    /** Repair modes where qemu-img's own repair fails ("Check failed") but ours succeeds. */
    readonly qemuRepairFails?: ReadonlyArray<"leaks" | "all">
    /**
     * QEMU stores persistent bitmaps anew when it closes an image it opened read-write, so its
     * repaired copy ends elsewhere: compare only the verdict after repair.
     */
    readonly persistentBitmaps?: boolean
  } = {}
) => {
  const theirs = qemuCheck(m)
  const ours = await ourCheck(m)
  expect(ours.exit, "exit code class").toBe(theirs.exit)
  expect(ours.counters).toEqual(theirs.counters)
  if (options.messages !== false) expect(ours.messages).toEqual(theirs.messages)
  for (const mode of options.repairs ?? ["leaks", "all"]) {
    const a = copy(m, `ours-${mode}`)
    const b = copy(m, `qemu-${mode}`)
    const oursRepair = await ourCheck(a, mode)
    const theirRepair = qemuCheck(b, mode)
    const after = qemuCheck(a)
    if (options.qemuRepairFails?.includes(mode)) {
      // QEMU's overlap check refuses to write the new refcount block over the broken old one
      // (and marks the image corrupt); we replace the old structure and leave a clean image.
      expect(theirRepair.exit).toBe(1)
      expect(theirRepair.counters).toBeUndefined()
      expect(oursRepair.exit, `-r ${mode} exit code class`).toBe(0)
      expect(after.exit, `qemu-img check after our -r ${mode}`).toBe(0)
      continue
    }
    expect(oursRepair.exit, `-r ${mode} exit code class`).toBe(theirRepair.exit)
    expect(oursRepair.counters, `-r ${mode} result`).toEqual(theirRepair.counters)
    // In a repair QEMU marks the image corrupt where a check only reports it; we never set the corrupt bit.
    const findings = (o: Outcome) => o.messages.filter((l) => !l.startsWith("qcow2: "))
    if (options.messages !== false) expect(findings(oursRepair), `-r ${mode} messages`).toEqual(findings(theirRepair))
    // When -r leaks finds a broken refcount structure, the check fails before any write: the
    // image stays as it was (QEMU itself may still change it on close, storing persistent bitmaps).
    const afterTheirs = theirRepair.counters === undefined && mode === "leaks" ? theirs : qemuCheck(b)
    expect(after.exit, `qemu-img check after our -r ${mode}`).toBe(afterTheirs.exit)
    if (!options.persistentBitmaps) {
      expect(after.counters, `qemu-img check after our -r ${mode}`).toEqual(afterTheirs.counters)
      // same layout: QEMU 7.2 never truncates trailing leaked clusters, and neither do we
      expect(fs.statSync(a.file).size, `file size after -r ${mode}`).toBe(fs.statSync(b.file).size)
    }
  }
  return { theirs, ours }
}

// ---- clean images ---------------------------------------------------------------------------

describe("clean images agree with qemu-img check", () => {
  for (const cs of [512, 4096, 65536, 2097152]) {
    it(`cluster size ${cs}`, async () => {
      const m = create(`cs${cs}.qcow2`, "64M", `cluster_size=${cs}`)
      io(m, "write -P 1 0 100k", "write -P 2 5M 3k", "write -P 3 40M 1M", "write -z 10M 64k")
      const { ours } = await compareWithQemu(m, { repairs: [] })
      expect(ours.exit).toBe(0)
    })
  }

  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    it(`refcount_bits=${bits}`, async () => {
      const m = create(`rb${bits}.qcow2`, "32M", `refcount_bits=${bits}`)
      io(m, "write -P 1 0 1M", "write -P 2 8M 64k")
      await compareWithQemu(m, { repairs: [] })
    })
  }

  it("compressed clusters (zlib and zstd), packed and fragmented", async () => {
    for (const type of ["zlib", "zstd"]) {
      const m = create(`comp-${type}.qcow2`, "16M", `compression_type=${type}`)
      io(m, "write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -c -P 3 1M 192k", "write -P 4 4M 128k")
      const { ours } = await compareWithQemu(m, { repairs: [] })
      expect(ours.counters!.compressedClusters).toBe(5)
    }
  })

  it("compressed clusters from qemu-img convert -c", async () => {
    const raw = tmp("conv.raw")
    sh("qemu-img", ["create", "-q", "-f", "raw", raw, "8M"])
    sh("qemu-io", ["-f", "raw", "-c", "write -P 7 0 3M", "-c", "write -P 9 5M 1M", raw])
    const file = tmp("conv.qcow2")
    sh("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", raw, file])
    await compareWithQemu({ file }, { repairs: [] })
  })

  it("internal snapshots share clusters (refcount 2, COPIED clear)", async () => {
    const m = create("snap.qcow2", "16M", "")
    io(m, "write -P 1 0 256k", "write -c -P 5 1M 64k")
    sh("qemu-img", ["snapshot", "-c", "s1", m.file])
    io(m, "write -P 2 64k 64k")
    sh("qemu-img", ["snapshot", "-c", "s2", m.file])
    io(m, "write -P 3 8M 64k", "discard 0 64k")
    await compareWithQemu(m, { repairs: [] })
  })

  it("extended L2 entries with subcluster writes and zeroes", async () => {
    const m = create("ext.qcow2", "16M", "extended_l2=on,cluster_size=64k")
    io(m, "write -P 1 0 4k", "write -P 2 8k 2k", "write -z 64k 8k", "write -P 3 1M 64k", "write -z -u 1M 4k", "write -c -P 4 2M 64k")
    await compareWithQemu(m, { repairs: [] })
  })

  it("external data file (data clusters not counted)", async () => {
    const dir = tmp("datafile")
    fs.mkdirSync(dir)
    sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "img.qcow2", "8M"], dir)
    sh("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 4M 64k", "img.qcow2"], dir)
    const m = { file: path.join(dir, "img.qcow2") }
    const theirs = spawnSync("qemu-img", ["check", "--output=json", "img.qcow2"], { cwd: dir, encoding: "utf8" })
    const ours = await ourCheck(m)
    expect(ours.exit).toBe(theirs.status)
    const j = JSON.parse(theirs.stdout) as Record<string, number>
    expect(ours.counters!.imageEndOffset).toBe(j["image-end-offset"])
    expect(ours.counters!.allocatedClusters).toBe(j["allocated-clusters"])
    expect(ours.counters!.fragmentedClusters).toBe(j["fragmented-clusters"] ?? 0)
  })

  it("persistent bitmaps (qemu-img bitmap --add, then writes)", async () => {
    const m = create("bitmap.qcow2", "64M", "cluster_size=4096")
    sh("qemu-img", ["bitmap", "--add", m.file, "b0"])
    sh("qemu-img", ["bitmap", "--add", "-g", "512", m.file, "b1"])
    io(m, "write -P 1 0 1M", "write -P 2 40M 4k")
    const info = JSON.parse(sh("qemu-img", ["info", "--output=json", m.file])) as { "format-specific": { data: { bitmaps: unknown[] } } }
    expect(info["format-specific"].data.bitmaps.length).toBe(2)
    await compareWithQemu(m, { repairs: [] })
  })

  it("LUKS encryption (header area counted)", async () => {
    const file = tmp("luks.qcow2")
    createLuks(file, "8M")
    const m: Made = { file, luks: true }
    io(m, "write -P 1 0 128k", "write -P 2 4M 64k")
    await compareWithQemu(m, { repairs: [] })
  })

  it("v2 image (compat=0.10) with snapshot", async () => {
    const m = create("v2.qcow2", "8M", "compat=0.10")
    io(m, "write -P 1 0 128k")
    sh("qemu-img", ["snapshot", "-c", "s", m.file])
    io(m, "write -P 1 0 64k")
    await compareWithQemu(m, { repairs: [] })
  })

  for (const mode of ["metadata", "falloc"]) {
    it(`preallocation=${mode}`, async () => {
      const m = create(`prealloc-${mode}.qcow2`, "4M", `preallocation=${mode}`)
      io(m, "write -P 1 1M 64k", "write -z 2M 64k")
      await compareWithQemu(m, { repairs: [] })
    })
  }

  it("empty image and an image larger than the file (no L2 tables)", async () => {
    await compareWithQemu(create("empty.qcow2", "1T", ""), { repairs: [] })
    await compareWithQemu(create("empty512.qcow2", "10G", "cluster_size=512"), { repairs: [] })
  })
})

// ---- damaged images -------------------------------------------------------------------------

/** A 16 MiB image with data at 0-192k, 1M and a compressed cluster at 2M. */
const base = (name: string, opts = "", extra: ReadonlyArray<string> = []): Made => {
  const m = create(name, "16M", opts, extra)
  io(m, "write -P 1 0 192k", "write -P 2 1M 64k", "write -c -P 3 2M 64k")
  return m
}

describe("damaged images agree with qemu-img check and repair", () => {
  it("leak: refcount of a data cluster raised", async () => {
    const m = base("leak.qcow2")
    const c = clusterOf(m.file, l2Entry(m.file, 1) & OFFSET_MASK)
    setRefcount(m.file, c, 2n)
    const { ours } = await compareWithQemu(m)
    expect(ours.exit).toBe(2) // the COPIED flag no longer matches either
  })

  it("leak: an unreferenced cluster with refcount 1, and trailing leaked clusters", async () => {
    const m = base("leak-end.qcow2")
    const size = fs.statSync(m.file).size
    const cs = layout(m.file).clusterSize
    fs.truncateSync(m.file, size + 3 * cs)
    for (let i = 0; i < 3; i++) setRefcount(m.file, Math.ceil(size / cs) + i, 1n)
    const { ours } = await compareWithQemu(m)
    expect(ours.exit).toBe(3)
    expect(ours.counters!.leaks).toBe(3)
  })

  it("leak in a refcount_bits=1 image and a refcount_bits=64 image", async () => {
    for (const bits of [1, 64]) {
      const m = base(`leak-rb${bits}.qcow2`, `refcount_bits=${bits}`)
      const size = fs.statSync(m.file).size
      const cs = layout(m.file).clusterSize
      fs.truncateSync(m.file, size + cs)
      setRefcount(m.file, Math.ceil(size / cs), 1n)
      await compareWithQemu(m)
    }
  })

  it("refcounts past 2^53 (refcount_bits=64) are printed exactly in the OFLAG_COPIED messages too", async () => {
    const m = base("wide-copied.qcow2", "refcount_bits=64")
    setRefcount(m.file, clusterOf(m.file, l2Entry(m.file, 0) & OFFSET_MASK), 2n ** 56n + 1n)
    setRefcount(m.file, clusterOf(m.file, l1Entry(m.file, 0) & OFFSET_MASK), 2n ** 56n + 1n)
    const { ours } = await compareWithQemu(m)
    expect(ours.messages).toContain("ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=72057594037927937")
  })

  it("a refcount table entry past 2^63 (the table pointed at the L1 table): every refcount read fails as in qemu-img (EIO, internal errors, exit 1)", async () => {
    const m = base("reftable-on-l1.qcow2")
    putU64(m.file, 48, BigInt(layout(m.file).l1Offset))
    const { ours } = await compareWithQemu(m)
    expect(ours.messages).toContain("Can't get refcount for cluster 0: Input/output error")
    expect(ours.exit).toBe(1)
  })

  it("corruption: refcount of a used data cluster zeroed (needs a rebuild)", async () => {
    const m = base("zero-ref.qcow2")
    setRefcount(m.file, clusterOf(m.file, l2Entry(m.file, 0) & OFFSET_MASK), 0n)
    await compareWithQemu(m)
  })

  it("corruption: shared cluster's refcount lowered from 2 to 1", async () => {
    const m = base("shared.qcow2")
    sh("qemu-img", ["snapshot", "-c", "s", m.file])
    setRefcount(m.file, clusterOf(m.file, l2Entry(m.file, 2) & OFFSET_MASK), 1n)
    await compareWithQemu(m)
  })

  it("corruption: the header cluster's refcount zeroed, and the L2 table's", async () => {
    const m = base("hdr-ref.qcow2")
    setRefcount(m.file, 0, 0n)
    setRefcount(m.file, clusterOf(m.file, l2Offset(m.file)), 0n)
    await compareWithQemu(m)
  })

  it("COPIED flag cleared on an L2 entry, set on a shared one", async () => {
    const m = base("copied-l2.qcow2")
    const at = l2EntryAt(m.file, 1)
    putU64(m.file, at, u64(m.file, at) & ~(1n << 63n))
    const { ours } = await compareWithQemu(m)
    expect(ours.messages.some((l) => l.startsWith("ERROR OFLAG_COPIED data cluster: l2_entry="))).toBe(true)
    const s = base("copied-l2-snap.qcow2")
    sh("qemu-img", ["snapshot", "-c", "s", s.file])
    const e = l2EntryAt(s.file, 0)
    putU64(s.file, e, u64(s.file, e) | (1n << 63n))
    await compareWithQemu(s)
  })

  it("COPIED flag cleared on an L1 entry", async () => {
    const m = base("copied-l1.qcow2")
    const at = layout(m.file).l1Offset
    putU64(m.file, at, u64(m.file, at) & ~(1n << 63n))
    const { ours } = await compareWithQemu(m)
    expect(ours.messages[0]).toMatch(/^ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=40000 refcount=1$/)
  })

  it("unaligned L2 table offset in the L1 table", async () => {
    const m = base("unaligned-l2.qcow2")
    const at = layout(m.file).l1Offset
    putU64(m.file, at, u64(m.file, at) + 0x200n)
    await compareWithQemu(m)
  })

  it("unaligned data cluster offset (stays a corruption after repair)", async () => {
    const m = base("unaligned-data.qcow2")
    const at = l2EntryAt(m.file, 1)
    putU64(m.file, at, u64(m.file, at) + 0x200n)
    const { ours } = await compareWithQemu(m)
    expect(ours.messages).toContain(`ERROR offset=${((l2Entry(m.file, 1) & OFFSET_MASK)).toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`)
  })

  it("unaligned preallocated zero cluster (repaired by making it a plain zero entry)", async () => {
    const m = base("unaligned-zero.qcow2")
    const at = l2EntryAt(m.file, 1)
    putU64(m.file, at, (u64(m.file, at) | 1n) + 0x200n)
    await compareWithQemu(m)
  })

  it("L2 entry pointing past the end of the file", async () => {
    const m = base("past-eof.qcow2")
    putU64(m.file, l2EntryAt(m.file, 5), (1n << 63n) | 0x10000000n)
    await compareWithQemu(m)
  })

  it("reserved bits set in L1 and L2 entries", async () => {
    const m = base("reserved.qcow2")
    const at = l2EntryAt(m.file, 1)
    putU64(m.file, at, u64(m.file, at) | 0x0200000000000002n)
    const l1 = layout(m.file).l1Offset
    putU64(m.file, l1, u64(m.file, l1) | 0x0100000000000000n)
    await compareWithQemu(m)
  })

  it("compressed entry with the COPIED flag", async () => {
    const m = base("comp-copied.qcow2")
    const at = l2EntryAt(m.file, 32)
    expect(u64(m.file, at) >> 62n).toBe(1n)
    putU64(m.file, at, u64(m.file, at) | (1n << 63n))
    await compareWithQemu(m)
  })

  it("refcount block pointing past the end of the file", async () => {
    const m = base("refblock-eof.qcow2")
    putU64(m.file, layout(m.file).reftableOffset, 0x4000000n)
    await compareWithQemu(m)
  })

  it("refcount table entry zeroed (refcount block missing)", async () => {
    const m = base("reftable-zero.qcow2")
    putU64(m.file, layout(m.file).reftableOffset, 0n)
    await compareWithQemu(m)
  })

  it("refcount table entry with reserved bits", async () => {
    const m = base("reftable-reserved.qcow2")
    const at = layout(m.file).reftableOffset
    putU64(m.file, at, u64(m.file, at) | 1n)
    await compareWithQemu(m, { qemuRepairFails: ["all"] })
  })

  it("refcount block offset not cluster aligned", async () => {
    const m = base("refblock-unaligned.qcow2")
    const at = layout(m.file).reftableOffset
    putU64(m.file, at, u64(m.file, at) + 0x200n)
    const { ours } = await compareWithQemu(m, { qemuRepairFails: ["all"] })
    expect(ours.counters!.checkErrors).toBeGreaterThan(0)
  })

  it("refcount block overlapping an L2 table", async () => {
    const m = base("refblock-overlap.qcow2")
    putU64(m.file, layout(m.file).reftableOffset, BigInt(l2Offset(m.file)))
    await compareWithQemu(m)
  })

  it("a cluster referenced twice (refcount too low, COPIED wrong)", async () => {
    const m = base("double-ref.qcow2")
    putU64(m.file, l2EntryAt(m.file, 1), l2Entry(m.file, 0))
    await compareWithQemu(m)
  })

  it("refcount overflow with refcount_bits=1", async () => {
    const m = base("overflow.qcow2", "refcount_bits=1")
    putU64(m.file, l2EntryAt(m.file, 1), l2Entry(m.file, 0))
    const { ours } = await compareWithQemu(m)
    expect(ours.messages.some((l) => l.startsWith("ERROR: overflow cluster offset=0x"))).toBe(true)
  })

  it("extended L2: subcluster both allocated and zero; unallocated entry with allocation bits", async () => {
    const m = base("ext-bad.qcow2", "extended_l2=on")
    const e0 = l2EntryAt(m.file, 0)
    putU64(m.file, e0 + 8, u64(m.file, e0 + 8) | (1n << 32n))
    putU64(m.file, l2EntryAt(m.file, 7) + 8, 3n)
    await compareWithQemu(m)
  })

  it("snapshot L1 table unaligned, snapshot l1_size too large, incomplete extra data", async () => {
    const m = base("snap-bad.qcow2")
    sh("qemu-img", ["snapshot", "-c", "a", m.file])
    sh("qemu-img", ["snapshot", "-c", "b", m.file])
    const table = Number(u64(m.file, 64))
    putU64(m.file, table, u64(m.file, table) + 0x200n)
    const second = table + Math.ceil((40 + readAt(m.file, table + 36, 4).readUInt32BE(0) + 1 + 1) / 8) * 8
    putU32(m.file, second + 8, 0x1000000)
    const { theirs } = await compareWithQemu(m, { repairs: ["leaks"] })
    expect(theirs.exit).toBe(2)
  })

  /** Rewrites the first snapshot table entry in place with `extraSize` bytes of extra data. */
  const resizeSnapshotExtra = (file: string, extraSize: number): void => {
    const table = Number(u64(file, 64))
    const h = readAt(file, table, 40)
    const extra = h.readUInt32BE(36)
    const idLen = h.readUInt16BE(12)
    const nameLen = h.readUInt16BE(14)
    const rest = readAt(file, table + 40, extra + idLen + nameLen)
    const newExtra = Buffer.alloc(extraSize, 0xab)
    rest.copy(newExtra, 0, 0, Math.min(extra, extraSize))
    h.writeUInt32BE(extraSize, 36)
    writeAt(file, table, Buffer.concat([h, newExtra, rest.subarray(extra), Buffer.alloc(8)]))
  }

  it("snapshot entry with incomplete extra data (rewritten by -r all)", async () => {
    for (const [opts, writes] of [
      ["", ["write -P 1 0 192k"]],
      ["cluster_size=512,refcount_bits=64", ["write -P 1 0 12k"]],
      ["cluster_size=512,refcount_bits=64", ["write -P 1 0 13k"]],
      ["cluster_size=512,refcount_bits=64", ["write -P 1 0 14k", "write -P 2 1M 1k"]],
      // the new table lands where no refcount block covers it yet: a new block is made for it
      ["cluster_size=512,refcount_bits=64", ["write -P 1 0 28160"]]
    ] as const) {
      const m = create("snap-incomplete.qcow2", "4M", opts)
      io(m, ...writes)
      sh("qemu-img", ["snapshot", "-c", "a", m.file])
      resizeSnapshotExtra(m.file, 8)
      const { theirs } = await compareWithQemu(m)
      expect(theirs.messages).toEqual(["ERROR snapshot table entry 0 is incomplete"])
    }
  })

  it("snapshot entry with too much extra data (check fails; -r all drops the excess)", async () => {
    const m = base("snap-extra.qcow2")
    sh("qemu-img", ["snapshot", "-c", "a", m.file])
    resizeSnapshotExtra(m.file, 2000)
    const { ours } = await compareWithQemu(m)
    expect(ours.exit).toBe(1)
  })

  it("snapshot table pointer invalid (check fails as in qemu-img)", async () => {
    const m = base("snap-ptr.qcow2")
    putU32(m.file, 60, 1)
    putU64(m.file, 64, 0x10200n)
    const { ours } = await compareWithQemu(m, { repairs: [] })
    expect(ours.exit).toBe(1)
    expect(ours.counters).toBeUndefined()
    const many = base("snap-many.qcow2")
    putU32(many.file, 60, 70000)
    await compareWithQemu(many, { repairs: ["leaks"] })
  })

  it("leak and lowered refcount in a LUKS image (header area counted)", async () => {
    const file = tmp("luks-damaged.qcow2")
    createLuks(file, "8M")
    const m: Made = { file, luks: true }
    io(m, "write -P 1 0 128k")
    const hdr = clusterOf(file, 0x10000n)
    setRefcount(file, hdr, 2n)
    setRefcount(file, clusterOf(file, l2Entry(file, 1) & OFFSET_MASK), 0n)
    await compareWithQemu(m)
  })

  it("leak in a bitmap table cluster and a bitmap data cluster's refcount zeroed", async () => {
    const m = create("bitmap-damaged.qcow2", "64M", "cluster_size=4096")
    sh("qemu-img", ["bitmap", "--add", m.file, "b0"])
    io(m, "write -P 1 0 1M")
    const h = readAt(m.file, 0, 4096)
    let o = 112
    while (h.readUInt32BE(o) !== 0x23852875) o += 8 + Math.ceil(h.readUInt32BE(o + 4) / 8) * 8
    const dir = Number(h.readBigUInt64BE(o + 8 + 16))
    const table = Number(u64(m.file, dir))
    const data = Number(u64(m.file, table) & OFFSET_MASK)
    expect(data).toBeGreaterThan(0)
    setRefcount(m.file, clusterOf(m.file, table), 3n)
    setRefcount(m.file, clusterOf(m.file, data), 0n)
    await compareWithQemu(m, { persistentBitmaps: true })
  })

  it("dirty lazy-refcounts image killed in the middle of writes", async () => {
    const m = create("lazy.qcow2", "16M", "lazy_refcounts=on")
    io(m, "write -P 3 4M 64k")
    spawnSync("qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -P 2 1M 128k", "-c", "sigraise 9", m.file])
    expect(readAt(m.file, 79, 1)[0]! & 1).toBe(1)
    const { theirs } = await compareWithQemu(m)
    expect(theirs.exit).not.toBe(0)
  })
})

describe("rebuildRefcounts", () => {
  const rebuild = (file: string) =>
    Effect.runPromise(Effect.scoped(Effect.flatMap(openNodeFile(file, { readOnly: false }), (storage) => rebuildRefcounts(storage))))

  it("replaces an intact refcount structure; the image stays clean and reads the same", async () => {
    const m = base("rebuild-clean.qcow2", "refcount_bits=8")
    sh("qemu-img", ["snapshot", "-c", "s", m.file])
    io(m, "write -P 9 64k 64k")
    const original = copy(m, "orig")
    const before = layout(m.file).reftableOffset
    const r = await rebuild(m.file)
    expect(r.corruptions + r.leaks + r.checkErrors).toBe(0)
    expect(r.messages[0]).toBe("Rebuilding refcount structure")
    expect(layout(m.file).reftableOffset).not.toBe(before)
    const after = qemuCheck(m)
    expect(after.exit).toBe(0)
    expect(after.counters!.leaks).toBe(0)
    sh("qemu-img", ["compare", "-q", original.file, m.file])
  })

  it("repairs a dirty lazy-refcounts image the way -r all does", async () => {
    const m = create("rebuild-lazy.qcow2", "16M", "lazy_refcounts=on")
    spawnSync("qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -P 2 3M 192k", "-c", "sigraise 9", m.file])
    const r = await rebuild(m.file)
    expect(r.corruptions).toBe(0)
    expect(r.corruptionsFixed).toBeGreaterThan(0)
    const after = qemuCheck(m)
    expect(after.exit).toBe(0)
    expect(sh("qemu-io", ["-r", "-c", "read -P 2 3M 192k", m.file])).toContain("read 196608/196608 bytes")
  })
})
