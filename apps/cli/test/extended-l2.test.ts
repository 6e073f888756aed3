/**
 * Extended L2 entries (subclusters) against qemu-img/qemu-io 7.2, the cases
 * of iotest 271 outside its concurrency part: each case sets up two
 * identical directories with qemu-img/qemu-io, runs the same command lines
 * with QEMU's tools in one and the bundle (`qcow2`, `qcow2 io`) in the
 * other, and expects the same output and exit codes (corruption messages
 * included, program name aside), the same L2 entries, the same
 * `qemu-img check` and `qemu-img map --output=json`, and `qemu-img compare`
 * identical.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, sh } from "./helpers.js"

let root = ""

beforeAll(() => {
  buildBundle()
  root = makeTempDir("qcow2-extended-l2-")
}, 120_000)

afterAll(() => {
  if (root !== "") fs.rmSync(root, { recursive: true, force: true })
})

/** The first `count` extended L2 entries of the table the first L1 entry names, in hex, one per line. */
const l2Entries = (file: string, count: number): string => {
  const bytes = fs.readFileSync(file)
  const l1 = Number(bytes.readBigUInt64BE(40))
  const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n)
  const lines: string[] = []
  for (let i = 0; i < count; i++) lines.push(`#${i}: ${bytes.subarray(l2 + 16 * i, l2 + 16 * i + 8).toString("hex")} ${bytes.subarray(l2 + 16 * i + 8, l2 + 16 * i + 16).toString("hex")}`)
  return lines.join("\n")
}

/** Writes `hex` bytes at `offset` of `file`. */
const poke = (offset: number, hex: string) => `node -e 'const f=require("fs").openSync("a.qcow2","r+");require("fs").writeSync(f,Buffer.from("${hex}","hex"),0,${hex.length / 2},${offset})'`

interface Case {
  readonly setup: string
  /** Command lines; IMG and IO stand for the tools (qemu-img / qemu-io, or the bundle's). */
  readonly run: ReadonlyArray<string>
  /** L2 entries compared afterwards (0: none), in a.qcow2 and the other `files`. */
  readonly entries: number
  readonly files?: ReadonlyArray<string>
  /** Compare host offsets, map and file length too (default); false where preallocation lays clusters out differently. */
  readonly layout?: boolean
  /** How the results are compared at the end: `qemu-img compare` (default), or byte for byte (damaged images QEMU cannot read whole). */
  readonly compare?: "qemu-img" | "bytes"
}

let counter = 0

const both = (c: Case) => {
  const result = (img: string, io: string) => {
    const dir = path.join(root, `case${counter++}`)
    fs.mkdirSync(dir)
    const setup = sh(dir, c.setup)
    if (setup.status !== 0) throw new Error(`setup failed: ${setup.out}`)
    const out = c.run
      .map((line) => {
        const r = sh(dir, line.replaceAll("IMG", img).replaceAll("IO", io))
        const program = line.startsWith("IO") ? "qemu-io: " : "qemu-img: "
        const text = r.out.replaceAll(/^qcow2: (?!Marking image|Image is corrupt)/gm, program).replaceAll(/\d+\.\d+ sec \([^)]*\)/g, "T")
        return `${text}rc=${r.status}\n`
      })
      .join("")
    const entries = c.entries > 0 ? ["a.qcow2", ...(c.files ?? [])].map((f) => l2Entries(path.join(dir, f), c.entries)).join("\n") : ""
    const check = sh(dir, "qemu-img check a.qcow2").out
    if (c.layout === false) {
      // Where clusters went shows in host offsets, fragmentation and the image end.
      const unplaced = (text: string) => text.replaceAll(/^.*(fragmented|Image end offset).*$/gm, "")
      return { dir, out: unplaced(out), entries: entries.replaceAll(/^(#\d+: )\w{16}/gm, "$1"), check: unplaced(check), map: "" }
    }
    const map = `${sh(dir, "qemu-img map --output=json a.qcow2").out}length ${fs.statSync(path.join(dir, "a.qcow2")).size}`
    return { dir, out, entries, check, map }
  }
  return { q: result("qemu-img", "qemu-io"), o: result(`node ${BUNDLE}`, `node ${BUNDLE} io`) }
}

const expectSame = (c: Case): void => {
  const { q, o } = both(c)
  expect(o.out).toBe(q.out)
  expect(o.entries).toBe(q.entries)
  expect(o.check).toBe(q.check)
  expect(o.map).toBe(q.map)
  if (c.compare === "bytes") {
    expect(fs.readFileSync(path.join(o.dir, "a.qcow2")).equals(fs.readFileSync(path.join(q.dir, "a.qcow2")))).toBe(true)
  } else {
    const cmp = sh(root, `qemu-img compare ${path.join(q.dir, "a.qcow2")} ${path.join(o.dir, "a.qcow2")}`)
    expect(cmp.out).toContain("Images are identical.")
  }
}

const EXT = "qemu-img create -q -f qcow2 -o extended_l2=on a.qcow2 1M"
/** Fresh layout: the L2 table of a new 1 MiB image is at 0x40000. */
const L2 = 0x40000

describe("damaged extended L2 entries: QEMU's corruption messages", () => {
  const cases: Record<string, Case> = {
    "allocated and zero bits both set, allocated cluster: read (two spaces) and write (one space)": {
      setup: `${EXT} && qemu-io -c 'write -q 32k 128k' a.qcow2 && cp a.qcow2 w.qcow2 && ${poke(L2 + 24, "00000001")}`,
      run: ["IO -c 'read 0 192k' a.qcow2", "cp w.qcow2 a.qcow2", poke(L2 + 24, "00000001"), "IO -c 'write 0 192k' a.qcow2"],
      entries: 3
    },
    "allocation bit without a host cluster, and both bits on an unallocated entry (index 0 prints as 0)": {
      setup: `${EXT} && qemu-io -c 'write -q 256k 1k' a.qcow2 && cp a.qcow2 w.qcow2 && ${poke(L2 + 15, "01")}`,
      run: [
        "IO -c 'read 0 1k' a.qcow2",
        "cp w.qcow2 a.qcow2",
        poke(L2 + 15, "01"),
        "IO -c 'write 0 1k' a.qcow2",
        "cp w.qcow2 a.qcow2",
        poke(L2 + 24, "0000000100000001"),
        "IO -c 'read 0 192k' a.qcow2"
      ],
      entries: 2
    },
    "unaligned host offset: check -r all cannot fix it, a read marks the image corrupt": {
      setup:
        "qemu-img create -q -f raw a.base 128k && qemu-io -f raw -c 'write -q -P 0xff 0 128k' a.base && qemu-img create -q -f qcow2 -o extended_l2=on -F raw -b a.base a.qcow2 && qemu-io -c 'write -q -P 1 4k 2k' a.qcow2",
      run: [poke(L2 + 6, "02"), "IMG check -r all a.qcow2", "IO -c 'read -q 0 2k' a.qcow2", "qemu-img info a.qcow2 | grep corrupt"],
      entries: 1
    },
    "unaligned host offset of an owned cluster on the write path (handle_copied's wording)": {
      setup: `${EXT} && qemu-io -c 'write -q -P 1 0 64k' a.qcow2`,
      run: [poke(L2 + 6, "02"), "IO -c 'write 4k 2k' a.qcow2"],
      entries: 1
    }
  }
  for (const [name, c] of Object.entries(cases)) it(name, () => expectSame({ ...c, compare: "bytes" }), 60_000)
})

describe("compressed clusters with a subcluster bitmap != 0 (QEMU ignores it)", () => {
  const setup = `${EXT} && qemu-io -c 'write -q -P 11 -c 0 64k' a.qcow2 && ${poke(L2 + 11, "0180")}`
  const cases: Record<string, Case> = {
    "check reports it; a read succeeds and leaves the entry": { setup, run: ["IMG check a.qcow2", "IO -c 'read -P 11 0 64k' a.qcow2", "IMG check a.qcow2"], entries: 1 },
    "a write allocates a normal cluster with every subcluster allocated": { setup, run: ["IO -c 'write -P 11 0 64k' a.qcow2", "IMG check a.qcow2"], entries: 1 },
    "a partial write copies the cluster": { setup, run: ["IO -c 'write -P 12 8k 2k' -c 'read -P 11 0 8k' -c 'read -P 12 8k 2k' a.qcow2"], entries: 1 },
    "check -r all leaves the entry and drops the leak, as QEMU does": { setup, run: ["IMG check -r all a.qcow2"], entries: 1, compare: "bytes" },
    "a COPIED flag on a compressed entry: reads and writes work, check reports it": {
      setup: `qemu-img create -q -f qcow2 a.qcow2 1M && qemu-io -c 'write -q -P 11 -c 0 64k' a.qcow2 && ${poke(L2, "c0")}`,
      run: ["IO -c 'read -P 11 0 64k' a.qcow2", "IMG check a.qcow2", "IO -c 'write -P 12 0 4k' a.qcow2"],
      entries: 0
    }
  }
  for (const [name, c] of Object.entries(cases)) it(name, () => expectSame(c), 60_000)
})

describe("copy-on-write of clusters shared with a snapshot keeps QEMU's partial bitmaps (iotest 271)", () => {
  it("data and zero writes over subclusters before, between and after the allocated ones", () => {
    const prepare = Array.from({ length: 10 }, (_, c) => `qemu-io -c 'write -q -z ${64 * c + 14}k 2k' -c 'write -q -P ${0xd0 + c} ${64 * c + 26}k 2k' -c 'write -q -P ${0xe0 + c} ${64 * c + 36}k 2k' a.qcow2`).join(" && ")
    expectSame({
      setup: `${EXT} && ${prepare} && qemu-img snapshot -c snap1 a.qcow2`,
      run: [
        "IO -c 'write -q -P 0xf0 30k 1k' -c 'write -q -P 0xf1 84k 1k' -c 'write -q -P 0xf2 168k 1k' -c 'write -q -P 0xf3 218k 1k' -c 'write -q -P 0xf4 270k 1k' -c 'write -q -P 0xf5 321k 1k' -c 'write -q -z 414k 3k' -c 'write -q -z 474k 2k' -c 'write -q -z 538k 1k' -c 'write -q -z 588k 1k' a.qcow2",
        "IO -c 'read -P 0xd0 26k 2k' -c 'read -P 0xf5 321k 1k' -c 'read -P 0 538k 1k' a.qcow2 | grep -c '^read'"
      ],
      entries: 10
    })
  }, 60_000)
})

describe("preallocation with extended L2 leaves subclusters as QEMU does", () => {
  const base = "qemu-img create -q -f raw a.base 1M && qemu-io -f raw -c 'write -q -P 0xff 0 1M' a.base"
  for (const mode of ["metadata", "falloc", "full"]) {
    it(`create -o preallocation=${mode} over a backing file, then resize: reads and map show the backing file`, () => {
      expectSame({
        setup: base,
        run: [
          `IMG create -q -f qcow2 -o extended_l2=on,preallocation=${mode} -F raw -b a.base a.qcow2 512k`,
          "IMG resize a.qcow2 1M",
          "IO -c 'read -P 0xff 0 512k' -c 'read -P 0 512k 512k' a.qcow2",
          "IMG map a.qcow2"
        ],
        entries: 16,
        // QEMU moves the refcount table before falloc/full preallocation.
        layout: mode === "metadata"
      })
    }, 60_000)
    it(`resize --preallocation=${mode} to an unaligned size, over a backing file and without one`, () => {
      expectSame({
        setup: `${base} && qemu-img create -q -f qcow2 -o extended_l2=on -F raw -b a.base a.qcow2 503k && qemu-img create -q -f qcow2 -o extended_l2=on b.qcow2 503k && qemu-io -c 'write -q -P 0xff 0 503k' b.qcow2`,
        run: [
          `IMG resize --preallocation=${mode} a.qcow2 1013k`,
          "IO -c 'read -P 0xff 0 503k' -c 'read -P 0 503k 510k' a.qcow2",
          `IMG resize --preallocation=${mode} b.qcow2 1013k`,
          "IO -c 'read -P 0xff 0 503k' -c 'read -P 0 503k 510k' b.qcow2",
          "qemu-img check b.qcow2"
        ],
        entries: 16,
        files: ["b.qcow2"],
        layout: mode === "metadata"
      })
    }, 60_000)
  }
})
