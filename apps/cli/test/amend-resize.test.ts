/**
 * resize, amend and create details against qemu-img 7.2: each case sets up
 * two identical directories with qemu-img/qemu-io, runs the same command
 * line through qemu-img in one and through the bundle in the other, and
 * expects the same output (program name aside), the same exit code, and
 * afterwards the same image as QEMU sees it: `qemu-img check` output,
 * `qemu-img info --output=json` (actual size and snapshot times aside),
 * `qemu-img map --output=json`, the file length, and `qemu-img compare`
 * identical.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BUNDLE, buildBundle, makeTempDir, sh } from "./helpers.js"

let root = ""

beforeAll(() => {
  buildBundle()
  root = makeTempDir("qcow2-amend-resize-")
}, 120_000)

afterAll(() => {
  if (root !== "") fs.rmSync(root, { recursive: true, force: true })
})

/** What QEMU sees of the image `file` in `cwd`. */
const state = (cwd: string, file: string): string => {
  const info = JSON.parse(sh(cwd, `qemu-img info --output=json ${file}`).out) as Record<string, unknown>
  delete info["actual-size"]
  for (const s of (info["snapshots"] as Array<Record<string, unknown>> | undefined) ?? []) {
    delete s["date-sec"]
    delete s["date-nsec"]
  }
  return [
    sh(cwd, `qemu-img check ${file}`).out,
    JSON.stringify(info, null, 1),
    sh(cwd, `qemu-img map --output=json ${file}`).out,
    `length ${fs.statSync(path.join(cwd, file)).size}`
  ].join("\n")
}

interface Case {
  readonly setup: string
  /** Command lines; IMG stands for the tool (qemu-img or the bundle). */
  readonly run: ReadonlyArray<string>
  readonly file?: string
  /**
   * Compare where clusters landed too (default). Preallocated areas and
   * new refcount structures are placed differently (QEMU puts the L2
   * tables of a full preallocation between its data runs, and reuses free
   * clusters for new refcount blocks); content and consistency must match.
   */
  readonly layout?: boolean
}

let counter = 0

/** Runs a case both ways; returns the two outputs and states. */
const both = (c: Case) => {
  const file = c.file ?? "a.qcow2"
  const result = (tool: string) => {
    const dir = path.join(root, `case${counter++}`)
    fs.mkdirSync(dir)
    const setup = sh(dir, c.setup)
    if (setup.status !== 0) throw new Error(`setup failed: ${setup.out}`)
    const out = c.run
      .map((line) => {
        const r = sh(dir, line.replaceAll("IMG", tool))
        return `${r.out.replaceAll(/^qcow2: /gm, "qemu-img: ").replaceAll("Try 'qcow2 --help'", "Try 'qemu-img --help'")}rc=${r.status}\n`
      })
      .join("")
    return { dir, out, state: c.layout === false ? sh(dir, `qemu-img check -q ${file}; echo check=$?`).out : state(dir, file) }
  }
  const q = result("qemu-img")
  const o = result(`node ${BUNDLE}`)
  return { q, o, file }
}

const expectSame = (c: Case): void => {
  const { q, o, file } = both(c)
  expect(o.out).toBe(q.out)
  expect(o.state).toBe(q.state)
  const cmp = sh(root, `qemu-img compare ${path.join(q.dir, file)} ${path.join(o.dir, file)}`)
  expect(cmp.out).toContain("Images are identical.")
}

const QCOW2_WITH_DATA = "qemu-img create -q -f qcow2 a.qcow2 1M && qemu-io -c 'write -P 0x22 0 1M' a.qcow2 >/dev/null"

describe("resize like qemu-img resize", () => {
  const cases: Record<string, Case> = {
    "grow, absolute and relative; messages for bad sizes": {
      setup: QCOW2_WITH_DATA,
      run: ["IMG resize a.qcow2 2M", "IMG resize a.qcow2 +1M", "IMG resize a.qcow2 9E", "IMG resize a.qcow2 1E", "IMG resize a.qcow2 16E", "IMG resize a.qcow2 1x", "IMG resize a.qcow2 0", "IMG resize a.qcow2 +1000"]
    },
    "shrink needs --shrink; negative relative sizes; the tail is dropped and the file cut": {
      setup: "qemu-img create -q -f qcow2 -o cluster_size=4k a.qcow2 16M && qemu-io -c 'write -P 0x22 0 16M' a.qcow2 >/dev/null",
      run: ["IMG resize a.qcow2 -512K", "IMG resize --shrink a.qcow2 -- -15M", "IMG resize -q a.qcow2 2M"]
    },
    "preallocation modes and their refusals": {
      setup: "qemu-img create -q -f qcow2 a.qcow2 1M",
      run: [
        "IMG resize --preallocation=bogus a.qcow2 +1M",
        "IMG resize --preallocation=full --shrink a.qcow2 512k",
        "IMG resize --preallocation=metadata a.qcow2 +1M",
        "IMG resize --preallocation=full a.qcow2 +1M",
        "IMG resize --preallocation=falloc a.qcow2 +1M"
      ],
      layout: false
    },
    "shrink and grow over a backing file read zeros, not the backing data (iotest 292)": {
      setup:
        "qemu-img create -q -f qcow2 b.qcow2 1M && qemu-io -c 'write -P 0x11 0 1M' b.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 a.qcow2 && qemu-io -c 'write -P 0x22 0 1M' a.qcow2 >/dev/null",
      run: ["IMG resize --shrink a.qcow2 520k", "IMG resize a.qcow2 567k", "qemu-io -c 'read -P 0x22 0 520k' -c 'read -P 0 520k 47k' a.qcow2 | grep -c read"]
    },
    "v2 over a longer backing file cannot zero the new area": {
      setup:
        "qemu-img create -q -f qcow2 -o compat=0.10 b.qcow2 1M && qemu-img create -q -f qcow2 -o compat=0.10 -b b.qcow2 -F qcow2 a.qcow2 512K",
      run: ["IMG resize a.qcow2 1M"]
    },
    "L1 growth past one cluster": {
      setup: "qemu-img create -q -f qcow2 -o cluster_size=512 a.qcow2 1M && qemu-io -c 'write -P 3 0 64k' a.qcow2 >/dev/null",
      run: ["IMG resize a.qcow2 +100M", "qemu-io -c 'write -P 4 100M 64k' a.qcow2 >/dev/null"]
    }
  }
  for (const [name, c] of Object.entries(cases)) it(name, () => expectSame(c), 60_000)

  it("raw files: exact byte lengths, the sector tail, preallocation", () => {
    expectSame({
      setup: "qemu-img create -q -f raw r.raw 1M",
      file: "r.raw",
      run: [
        "IMG resize -f raw r.raw +1000",
        "IMG resize -f raw r.raw 1000",
        "IMG resize --shrink -f raw r.raw 1000",
        "IMG resize -f raw --preallocation=metadata r.raw 2M",
        "IMG resize -f raw --preallocation=full r.raw 1M"
      ]
    })
  }, 60_000)
})

describe("amend like qemu-img amend", () => {
  const zeros = "qemu-img create -q -f qcow2 -o lazy_refcounts=on a.qcow2 64M && qemu-io -c 'write -P 0x22 0 300k' -c 'write -z 1M 128k' -c 'write -z 32M 64k' a.qcow2 >/dev/null"
  const cases: Record<string, Case> = {
    "downgrade expands zero clusters (no backing file: unallocated)": { setup: zeros, run: ["IMG amend -o compat=0.10 a.qcow2"] },
    "downgrade over a backing file writes zero clusters, with -p progress": {
      setup:
        "qemu-img create -q -f qcow2 b.qcow2 4G && qemu-io -c 'write -P 0x2a 0 128k' b.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 a.qcow2 && qemu-io -c 'write -z 0 64k' -c 'write -z 1G 64k' -c 'write -z 3G 64k' a.qcow2 >/dev/null",
      run: ["IMG amend -p -o compat=0.10 a.qcow2 | od -c"]
    },
    "upgrade with lazy refcounts and size, then lazy refcounts off": {
      setup: "qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 64M && qemu-io -c 'write -P 0x2a 42M 64k' a.qcow2 >/dev/null",
      run: ["IMG amend -o compat=1.1,lazy_refcounts=on,size=128M a.qcow2", "IMG amend -o lazy_refcounts=off a.qcow2"]
    },
    "refcount widths, any to any, with -p": {
      // 4 KiB clusters: qemu-img amend takes minutes for narrow widths with 64 KiB clusters.
      setup: "qemu-img create -q -f qcow2 -o refcount_bits=64,cluster_size=4k a.qcow2 1G && qemu-io -c 'write 0 1M' -c 'write -c 2M 4k' a.qcow2 >/dev/null",
      run: ["IMG amend -p -o refcount_bits=16,compat=0.10 a.qcow2 | od -c", "IMG amend -o compat=1.1,refcount_bits=1 a.qcow2", "IMG amend -o refcount_bits=8 a.qcow2"],
      // The new refcount structures go past the end here, where QEMU reuses free clusters first.
      layout: false
    },
    "what cannot be amended, with QEMU's messages": {
      setup: "qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 64M",
      run: [
        "IMG amend -o lazy_refcounts=on a.qcow2",
        "IMG amend -o compat=0.10,lazy_refcounts=on a.qcow2",
        "IMG amend -o compat=0.42 a.qcow2",
        "IMG amend -o foo=bar a.qcow2",
        "IMG amend -o cluster_size=1k a.qcow2",
        "IMG amend -o preallocation=on a.qcow2",
        "IMG amend -o refcount_bits=3 a.qcow2",
        "IMG amend -o refcount_bits=8 a.qcow2",
        "IMG amend -o backing_file=x a.qcow2",
        "IMG amend -o data_file=foo a.qcow2",
        "IMG amend a.qcow2",
        "IMG amend -o help a.qcow2",
        "IMG amend -f qcow2 -o help",
        "IMG amend -o size=2M -f raw a.qcow2"
      ]
    },
    "downgrade refusals: extended L2, data file, refcount width": {
      setup: "qemu-img create -q -f qcow2 -o extended_l2=on a.qcow2 64M && qemu-img create -q -f qcow2 -o data_file=a.data d.qcow2 1M && qemu-img create -q -f qcow2 -o refcount_bits=8 r.qcow2 1M",
      run: ["IMG amend -o compat=0.10 a.qcow2", "IMG amend -o compat=0.10 d.qcow2", "IMG amend -o compat=0.10 r.qcow2", "IMG amend -o data_file_raw=on d.qcow2"]
    }
  }
  for (const [name, c] of Object.entries(cases)) it(name, () => expectSame(c), 60_000)
})

describe("create details like qemu-img create", () => {
  it("-o help and -o ? list the options, with and without a file name", () => {
    expectSame({
      setup: "qemu-img create -q -f qcow2 a.qcow2 1M",
      run: ["IMG create -f qcow2 -o help", "IMG create -f qcow2 -o '?' x.qcow2 1M", "IMG create -f raw -o help", "IMG create -f raw -o help x.raw"]
    })
  })

  it("a fresh image is 196616 bytes; data files have the virtual size; falloc allocates; 1 EiB gets QEMU's message", () => {
    const { q, o } = both({
      setup: "qemu-img create -q -f qcow2 a.qcow2 1M",
      run: [
        "IMG create -f qcow2 n.qcow2 1M && stat -c %s n.qcow2",
        "IMG create -f qcow2 -o data_file=d.data d.qcow2 10M && stat -c %s d.data",
        // du counts ext4's extent-tree blocks too, which depend on how fragmented the free space is: check that the 4 MiB are allocated, not the exact count.
        "IMG create -f qcow2 -o preallocation=falloc f.qcow2 4M && test $(du -k f.qcow2 | cut -f1) -ge 4096 && echo allocated",
        "IMG create -f raw -o preallocation=falloc f.raw 4M && test $(du -k f.raw | cut -f1) -ge 4096 && echo allocated",
        "IMG create -f qcow2 e.qcow2 1E",
        "IMG create -f raw e.raw 1E"
      ]
    })
    expect(o.out).toBe(q.out)
    expect(o.out).toContain("\n196616\nrc=0")
  })

  it("odd-sized raw files: the size rounds up to 512 and the tail reads as zeros", () => {
    expectSame({
      setup: "printf 'hello world!' > r.raw",
      file: "r.raw",
      run: ["IMG info -f raw r.raw", "IMG map -f raw --output=json r.raw", "IMG convert -f raw -O raw r.raw c.raw && od -c c.raw | tail -3"]
    })
  })
})
