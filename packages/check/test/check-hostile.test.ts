/**
 * checkQcow2 on hostile images: absurd sizes and offsets in the header and
 * tables, truncated files, random damage. It must never throw, never
 * allocate by what the image claims, and agree with `qemu-img check`
 * wherever qemu-img can open the image.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import { CheckError, type CheckResult, MAX_MESSAGES } from "../src/index.js"
import { countersFromJson, ourCheckResult, putU32, putU64, readAt, scratch, sh, u64, writeAt } from "./files.js"

const tmp = scratch("qcow2-check-hostile-")



/** A 16 MiB image: data at 0-192k and 1M, a compressed cluster at 2M, one snapshot. */
const sample = (name: string, opts = ""): string => {
  const file = tmp(name)
  sh("qemu-img", ["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), file, "16M"])
  sh("qemu-io", ["-c", "write -P 1 0 192k", "-c", "write -P 2 1M 64k", "-c", "write -c -P 3 2M 64k", file])
  return file
}

const L1 = (file: string) => Number(u64(file, 40))
const REFTABLE = (file: string) => Number(u64(file, 48))
const L2 = (file: string) => Number(u64(file, L1(file)) & 0x00fffffffffffe00n)

interface Outcome {
  readonly exit: number
  readonly counters?: Omit<CheckResult, "messages">
  readonly messages: ReadonlyArray<string>
}

const qemu = (file: string, repair?: "leaks" | "all"): Outcome => {
  const r = spawnSync("qemu-img", ["check", "--output=json", ...(repair ? ["-r", repair] : []), file], { encoding: "utf8", maxBuffer: 1 << 28 })
  const j = r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, number>) : undefined
  return {
    exit: r.status ?? -1,
    ...(j !== undefined
      ? {
          counters: countersFromJson(j)
        }
      : {}),
    messages: r.stderr
      .split("\n")
      .map((l) => l.replace(/^qemu-img: /, ""))
      .filter((l) => l !== "" && !l.startsWith("Check failed") && !l.startsWith("qcow2: ") && !l.startsWith("Could not open"))
  }
}

/** Our check; a CheckError other than "Aborted" (QEMU could not open the image) gives exit 1 and `openError`. */
const ours = async (file: string, repair?: "leaks" | "all"): Promise<Outcome & { readonly openError?: CheckError }> => {
  const r = await ourCheckResult(file, repair)
  if (r._tag === "Failure") {
    expect(r.failure).toBeInstanceOf(CheckError)
    if (r.failure.reason === "Aborted") return { exit: 1, messages: r.failure.messages.filter((l) => !l.startsWith("qcow2: ")) }
    return { exit: 1, messages: [], openError: r.failure }
  }
  const { messages, ...counters } = r.success
  const exit = counters.checkErrors > 0 ? 1 : counters.corruptions > 0 ? 2 : counters.leaks > 0 ? 3 : 0
  return { exit, counters, messages: messages.filter((l) => !l.startsWith("qcow2: ")) }
}

const agree = async (
  file: string,
  options: {
    readonly messages?: boolean
    readonly repair?: boolean
    /** Repair modes where QEMU's overlap check refuses to write the new structure over the broken old one. */
    readonly qemuRepairFails?: ReadonlyArray<"leaks" | "all">
  } = {}
) => {
  const theirs = qemu(file)
  const mine = await ours(file)
  expect(mine.exit).toBe(theirs.exit)
  expect(mine.counters).toEqual(theirs.counters)
  if (options.messages !== false && mine.openError === undefined) expect(mine.messages).toEqual(theirs.messages)
  if (options.repair) {
    for (const mode of ["leaks", "all"] as const) {
      const a = `${file}.ours-${mode}`
      const b = `${file}.qemu-${mode}`
      fs.copyFileSync(file, a)
      fs.copyFileSync(file, b)
      const r1 = await ours(a, mode)
      const r2 = qemu(b, mode)
      if (options.qemuRepairFails?.includes(mode)) {
        expect(r2.exit).toBe(1)
        expect(r1.exit, `-r ${mode}`).toBe(0)
        expect(qemu(a).exit, `qemu-img check after our -r ${mode}`).toBe(0)
        continue
      }
      expect(r1.exit, `-r ${mode}`).toBe(r2.exit)
      expect(r1.counters, `-r ${mode}`).toEqual(r2.counters)
      expect(qemu(a).counters, `qemu-img check after our -r ${mode}`).toEqual(qemu(b).counters)
    }
  }
  return { theirs, mine }
}

describe("absurd header fields", () => {
  it("l1_size and refcount_table_clusters beyond QEMU's limits: both refuse to open", async () => {
    const a = sample("l1size.qcow2")
    putU32(a, 36, 0x7fffffff)
    const r = await agree(a)
    expect(r.mine.openError?.reason).toBe("Corrupt")
    const b = sample("rtclusters.qcow2")
    putU32(b, 56, 0xffffffff)
    expect((await agree(b)).mine.openError).toBeDefined()
  })

  it("unknown incompatible feature bit: both refuse", async () => {
    const a = sample("incompat.qcow2")
    putU64(a, 72, 1n << 40n)
    expect((await agree(a)).mine.openError?.reason).toBe("Unsupported")
  })

  it("not a qcow2 file (qemu-img probes it as raw, which has no check)", async () => {
    const a = tmp("raw.img")
    fs.writeFileSync(a, Buffer.alloc(4096, 7))
    expect(qemu(a).exit).toBe(63)
    expect((await ours(a)).openError?.reason).toBe("NotQcow2")
  })

  it("active L1 table far past the end of the file", async () => {
    const a = sample("l1-far.qcow2")
    putU64(a, 40, 1n << 40n)
    await agree(a, { repair: true })
  })

  it("refcount table past the end of the file (every refcount reads as 0)", async () => {
    const a = sample("rt-far.qcow2")
    putU64(a, 48, 1n << 40n)
    await agree(a, { repair: true })
  })

  it("a refcount table of 128 clusters, mostly past the end of the file", async () => {
    const a = sample("rt-big.qcow2")
    putU32(a, 56, 128)
    await agree(a, { repair: true, qemuRepairFails: ["all"] })
  })

  it("huge virtual size with a matching L1 table past the end of the file", async () => {
    const a = sample("vsize.qcow2")
    putU64(a, 24, 1n << 50n)
    putU32(a, 36, 2 ** 21)
    putU64(a, 40, 1n << 45n)
    await agree(a)
  })
})

describe("absurd offsets in tables", () => {
  it("refcount block offset beyond 2^53", async () => {
    const a = sample("rb-huge.qcow2")
    putU64(a, REFTABLE(a), 0x4000000000000000n)
    await agree(a, { repair: true })
  })

  it("refcount block offset beyond 2^53 with 512-byte clusters (cluster numbers past 2^53)", async () => {
    const a = sample("rb-huge-512.qcow2", "cluster_size=512")
    putU64(a, REFTABLE(a), 0x4000000000000400n)
    await agree(a, { repair: true })
  })

  it("refcount block a few GiB past the end (repair grows the file like QEMU)", async () => {
    const a = sample("rb-far.qcow2")
    putU64(a, REFTABLE(a), 1n << 32n)
    await agree(a, { repair: true })
    expect(fs.statSync(`${a}.ours-all`).size).toBe(fs.statSync(`${a}.qemu-all`).size)
  })

  it("L1 entry with an offset beyond 2^53 (exact in messages)", async () => {
    const a = sample("l1-huge.qcow2")
    putU32(a, 36, 2)
    putU64(a, L1(a) + 8, 0x80fedcba98765400n)
    const { mine } = await agree(a, { repair: true })
    expect(mine.messages.some((l) => l.includes("fedcba98765400"))).toBe(true)
  })

  it("L2 entries with offsets beyond 2^53: data, zero, compressed", async () => {
    const a = sample("l2-huge.qcow2")
    putU64(a, L2(a) + 8 * 10, 0x80fedcba98765400n)
    putU64(a, L2(a) + 8 * 11, 0x00f0000000000201n)
    putU64(a, L2(a) + 8 * 12, 0x403fffffffffffffn)
    await agree(a, { repair: true })
  })

  it("snapshot with a 4M-entry L1 table past the end and one at an odd offset", async () => {
    const a = sample("snap-far.qcow2")
    sh("qemu-img", ["snapshot", "-c", "s", a])
    const table = Number(u64(a, 64))
    putU64(a, table, 1n << 44n)
    putU32(a, table + 8, 4194304)
    await agree(a, { repair: true })
  })

  it("snapshot table offset far past the end with 20000 snapshots", async () => {
    const a = sample("snap-count.qcow2")
    putU32(a, 60, 20000)
    putU64(a, 64, 1n << 40n)
    await agree(a)
  })

  it("bitmap directory past the end of the file (both refuse to open)", async () => {
    const a = tmp("bm.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", a, "16M"])
    sh("qemu-img", ["bitmap", "--add", a, "b"])
    const h = readAt(a, 0, 4096)
    let o = 112
    while (o < 4096 && h.readUInt32BE(o) !== 0x23852875) o += 8 + Math.ceil(h.readUInt32BE(o + 4) / 8) * 8
    expect(o).toBeLessThan(4096)
    putU64(a, o + 8 + 16, 1n << 40n)
    expect((await agree(a)).mine.openError?.message).toBe("Bitmap '' doesn't satisfy the constraints")
  })
})

describe("findings on every cluster", () => {
  it("keeps the counters exact but at most MAX_MESSAGES messages", async () => {
    const a = tmp("all-zero-refcounts.qcow2")
    sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512,preallocation=metadata", a, "64M"])
    writeAt(a, REFTABLE(a), Buffer.alloc(readAt(a, 56, 4).readUInt32BE(0) * 512))
    const theirs = qemu(a)
    const mine = await ours(a)
    expect(mine.counters).toEqual(theirs.counters)
    expect(theirs.messages.length).toBeGreaterThan(MAX_MESSAGES)
    expect(mine.messages.length).toBe(MAX_MESSAGES + 1)
    expect(mine.messages.slice(0, MAX_MESSAGES)).toEqual(theirs.messages.slice(0, MAX_MESSAGES))
    expect(mine.messages[MAX_MESSAGES]).toBe("(further messages omitted)")
  })
})

describe("truncated and randomly damaged images", () => {
  it("file cut short at every cluster boundary of the metadata", async () => {
    const src = sample("cut.qcow2")
    for (const end of [65536 * 2, 65536 * 3, 65536 * 4, 65536 * 5 + 100]) {
      const a = tmp(`cut-${end}.qcow2`)
      fs.copyFileSync(src, a)
      fs.truncateSync(a, end)
      await agree(a, { repair: true })
    }
  })

  it("random bytes in the metadata clusters (seeded) never crash and agree with qemu-img", async () => {
    const src = sample("fuzz.qcow2", process.env.FUZZ_OPTS ?? "cluster_size=4096")
    sh("qemu-img", ["snapshot", "-c", "s", src])
    let seed = 12345
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    const metadata = [Number(u64(src, 40)), Number(u64(src, 48)), Number(u64(src, 64)), L2(src)]
    const refblock = Number(u64(src, REFTABLE(src)) & ~0x1ffn)
    metadata.push(refblock)
    for (let round = 0; round < Number(process.env.FUZZ_ROUNDS ?? 24); round++) {
      const a = tmp(`fuzz-${round}.qcow2`)
      fs.copyFileSync(src, a)
      for (let k = 0; k < 1 + rand(4); k++) {
        const base = metadata[rand(metadata.length)]!
        writeAt(a, base + rand(256), Buffer.from([rand(256)]))
      }
      const { theirs, mine } = await agree(a, { messages: false, repair: process.env.FUZZ_REPAIR === "1" })
      if (theirs.counters === undefined) expect(mine.counters).toBeUndefined()
    }
  })
  it("random 64-bit words in table entries (seeded) never crash and agree with qemu-img", async () => {
    const opts = process.env.FUZZ_OPTS ?? "cluster_size=512"
    const src = sample("fuzz64.qcow2", opts)
    sh("qemu-img", ["snapshot", "-c", "s", src])
    let seed = 777
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    const word = (): bigint => {
      const kinds = [
        () => BigInt(rand(2 ** 20)) << 9n,
        () => (1n << 63n) | (BigInt(rand(2 ** 20)) << 9n),
        () => (BigInt(rand(256)) << 56n) | BigInt(rand(2 ** 30)),
        () => (1n << 62n) | (BigInt(rand(2 ** 30)) << 20n) | BigInt(rand(2 ** 20)),
        () => BigInt(rand(2 ** 31)) * BigInt(rand(2 ** 31)) * BigInt(rand(4) + 1)
      ]
      return kinds[rand(kinds.length)]!()
    }
    const tables = [Number(u64(src, 40)), Number(u64(src, 48)), L2(src), Number(u64(src, REFTABLE(src)) & ~0x1ffn)]
    for (let round = 0; round < Number(process.env.FUZZ_ROUNDS ?? 16); round++) {
      const a = tmp(`fuzz64-${round}.qcow2`)
      fs.copyFileSync(src, a)
      for (let k = 0; k < 1 + rand(3); k++) putU64(a, tables[rand(tables.length)]! + 8 * rand(16), word())
      await agree(a, { messages: false, repair: process.env.FUZZ_REPAIR !== "0" })
    }
  })
})
