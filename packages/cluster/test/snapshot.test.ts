import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { Effect } from "effect"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import type { Qcow2Engine } from "../src/index.js"
import { fail, openEngine, pattern, qemuCheck, qemuImg, qemuIo, run, scratch } from "./engine.js"

/** Internal snapshots (spec "Snapshots") taken, reverted to and deleted by the engine, judged by qemu-img. */

const dir = scratch()
afterAll(() => dir.cleanup())

const T0 = { seconds: 1_700_000_000, nanoseconds: 123_000 }

/** Guest content of the image at `file` (or of one of its snapshots), as qemu-img reads it. */
const qemuContent = (file: string, snapshot?: string): Uint8Array => {
  const out = dir.path(`content-${Math.random().toString(36).slice(2)}.raw`)
  qemuImg("convert", ...(snapshot !== undefined ? ["-l", snapshot] : []), "-O", "raw", file, out)
  return new Uint8Array(readFileSync(out))
}

const engineContent = (engine: Qcow2Engine): Promise<Uint8Array> => {
  const out = new Uint8Array(engine.virtualSize)
  return run(Effect.as(engine.read(0, out), out))
}

/** Every refcount of the image is 0 or 1 (no cluster shared any more). */
const maxRefcount = (engine: Qcow2Engine): Promise<number> =>
  run(
    Effect.gen(function* () {
      let max = 0
      for (let c = 0; c < engine.refcounts.endOfAllocatedClusters; c++) max = Math.max(max, yield* engine.refcounts.get(c))
      return max
    })
  )

/** Where two byte arrays first differ (-1: equal), so a mismatch reports an offset, not a 4 MiB diff. */
const firstDifference = (a: Uint8Array, b: Uint8Array): number => {
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i
  return Math.min(a.length, b.length)
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => expect({ lengths: [a.length, b.length], firstDifference: firstDifference(a, b) }).toEqual({ lengths: [b.length, b.length], firstDifference: -1 })

const clean = (file: string) => expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })

/** An image with data, compressed, preallocated-zero and plain zero clusters, made by qemu-io. */
const mixedImage = (name: string, options = "cluster_size=65536"): string => {
  const file = dir.path(name)
  qemuImg("create", "-q", "-f", "qcow2", "-o", options, file, "4M")
  qemuIo("-c", "write -P 0x11 0 640k", "-c", "write -c -P 0x22 1M 128k", "-c", "write -z 64k 64k", "-c", "write -z 3M 64k", file)
  return file
}

describe("snapshot create", () => {
  it("writes a snapshot qemu-img lists and reads, and COWs later writes", async () => {
    const file = mixedImage("create.qcow2")
    const before = qemuContent(file)
    const { engine, save } = await openEngine(file)
    const entry = await run(engine.createSnapshot("first", T0))
    expect(entry).toMatchObject({ id: "1", name: "first", vmStateSize: 0, diskSize: 4 << 20, icount: 0n })
    await run(engine.write(32 * 1024, pattern(128 * 1024, 7)))
    await run(engine.writeCompressed(1 << 20, pattern(64 * 1024, 8)))
    await run(engine.flush())
    await save(file)
    clean(file)
    expect(qemuImg("snapshot", "-l", file)).toMatch(/^Snapshot list:\nID +TAG +VM SIZE +DATE +VM CLOCK +ICOUNT\n1 +first +0 B .* 00:00:00\.000 +0\n$/)
    sameBytes(qemuContent(file, "first"), before)
    sameBytes(qemuContent(file, "snapshot.id=1"), before)
    const after = new Uint8Array(before)
    after.set(pattern(128 * 1024, 7), 32 * 1024)
    after.set(pattern(64 * 1024, 8), 1 << 20)
    sameBytes(qemuContent(file), after)
    // The table entry carries QEMU's 24 bytes of extra data.
    const info = JSON.parse(qemuImg("info", "--output=json", file))
    expect(info.snapshots).toEqual([{ id: "1", name: "first", "vm-state-size": 0, "date-sec": T0.seconds, "date-nsec": T0.nanoseconds, "vm-clock-sec": 0, "vm-clock-nsec": 0, icount: 0 }])
  })

  it("numbers snapshots one past the largest ID and lets qemu-img delete them cleanly", async () => {
    const file = mixedImage("ids.qcow2")
    qemuImg("snapshot", "-c", "made-by-qemu", file)
    const { engine, save } = await openEngine(file)
    expect((await run(engine.createSnapshot("a", T0))).id).toBe("2")
    expect((await run(engine.createSnapshot("a", T0))).id).toBe("3")
    await run(engine.flush())
    await save(file)
    clean(file)
    qemuImg("snapshot", "-d", "a", file)
    qemuImg("snapshot", "-d", "a", file)
    qemuImg("snapshot", "-d", "made-by-qemu", file)
    clean(file)
  })

  it("fails on refcount_bits=1 with EINVAL and leaves only the new L1 table leaked, as QEMU", async () => {
    const file = dir.path("rc1.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", file, "64M")
    qemuIo("-c", "write 0 512", file)
    const { engine, save } = await openEngine(file)
    const error = await fail(engine.createSnapshot("foo", T0))
    expect(error).toMatchObject({ _tag: "ImageError", errno: "EINVAL" })
    await run(engine.flush())
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 3, leaks: 1 })
    expect(engine.snapshots.entries).toEqual([])
  })
})

describe("snapshot apply and delete", () => {
  it("reverts to a snapshot qemu-img took, resizing to its disk size, then deletes it down to refcount 1", async () => {
    const file = mixedImage("apply.qcow2")
    const snapshotted = qemuContent(file)
    qemuImg("snapshot", "-c", "base", file)
    qemuIo("-c", "write -P 0x33 0 1M", "-c", "discard 3M 1M", file)
    qemuImg("resize", "-q", file, "8M")
    const { engine, save } = await openEngine(file)
    await run(engine.applySnapshot("base"))
    expect(engine.virtualSize).toBe(4 << 20)
    sameBytes(await engineContent(engine), snapshotted)
    await run(engine.flush())
    await save(file)
    clean(file)
    sameBytes(qemuContent(file), snapshotted)
    await run(engine.deleteSnapshot("1", "base"))
    await run(engine.flush())
    await save(file)
    clean(file)
    expect(qemuImg("snapshot", "-l", file)).toBe("")
    sameBytes(qemuContent(file), snapshotted)
  })

  it("reverts to a snapshot whose L1 table is larger than the active one, and back", async () => {
    const file = dir.path("l1sizes.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", file, "6M")
    qemuIo("-c", "write -P 7 0 6M", file)
    const large = qemuContent(file)
    qemuImg("snapshot", "-c", "large", file)
    qemuImg("resize", "-q", "--shrink", file, "2M")
    qemuIo("-c", "write -P 8 0 1M", file)
    const small = qemuContent(file)
    qemuImg("snapshot", "-c", "small", file)
    const { engine, save } = await openEngine(file)
    await run(engine.applySnapshot("large"))
    expect(engine.virtualSize).toBe(6 << 20)
    expect(engine.l1.size).toBeGreaterThanOrEqual(3)
    sameBytes(await engineContent(engine), large)
    await run(engine.applySnapshot("small"))
    expect(engine.virtualSize).toBe(2 << 20)
    sameBytes(await engineContent(engine), small)
    await run(engine.flush())
    await save(file)
    clean(file)
    // convert -l keeps the image's virtual size (QEMU's load_tmp).
    sameBytes(qemuContent(file, "large"), large.subarray(0, 2 << 20))
  })

  it("finds a snapshot by ID before name, and reports a missing one as ENOENT", async () => {
    const file = mixedImage("lookup.qcow2")
    const { engine, save } = await openEngine(file)
    await run(engine.createSnapshot("2", T0))
    await run(engine.write(0, pattern(4096, 1)))
    const second = await engineContent(engine)
    await run(engine.createSnapshot("1", T0))
    await run(engine.write(0, pattern(4096, 2)))
    // "2" is the ID of the snapshot named "1".
    await run(engine.applySnapshot("2"))
    sameBytes(await engineContent(engine), second)
    expect(await fail(engine.applySnapshot("nope"))).toMatchObject({ errno: "ENOENT" })
    expect(await fail(engine.deleteSnapshot("1", "1"))).toMatchObject({ errno: "ENOENT" })
    await run(engine.flush())
    await save(file)
    clean(file)
  })

  it("refuses snapshots of an image with an external data file (ENOTSUP)", async () => {
    const file = dir.path("ext.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", `data_file=${dir.path("ext.data")}`, file, "1M")
    const { engine } = await openEngine(file)
    expect(await fail(engine.createSnapshot("x", T0))).toMatchObject({ reason: "Unsupported", errno: "ENOTSUP" })
  })
})

describe("deleting the last snapshot", () => {
  it("leaves every refcount at 1 and COPIED set again, after writes that copied tables and clusters", async () => {
    const file = dir.path("last.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", file, "4M")
    qemuIo("-c", "write -P 1 0 3M", file)
    const { engine, save } = await openEngine(file)
    await run(engine.createSnapshot("a", T0))
    await run(engine.createSnapshot("b", T0))
    expect(await maxRefcount(engine)).toBe(3)
    await run(engine.write(1 << 20, pattern(1 << 20, 3)))
    await run(engine.deleteSnapshot("1", "a"))
    await run(engine.deleteSnapshot("2", "b"))
    expect(await maxRefcount(engine)).toBe(1)
    await run(engine.flush())
    await save(file)
    clean(file)
    // A write now goes in place: no cluster is allocated for it.
    const end = engine.refcounts.endOfAllocatedClusters
    await run(engine.write(0, pattern(8192, 4)))
    expect(engine.refcounts.endOfAllocatedClusters).toBe(end)
  })
})

describe("snapshot load (read-only view)", () => {
  it("reads a snapshot's content through its L1 table, the virtual size unchanged", async () => {
    const file = mixedImage("load.qcow2", "cluster_size=4096")
    const snapshotted = qemuContent(file)
    qemuImg("snapshot", "-c", "s", file)
    qemuIo("-c", "write -P 0x44 0 2M", file)
    qemuImg("resize", "-q", file, "6M")
    const { engine } = await openEngine(file, { readOnly: true })
    await run(engine.loadSnapshot(undefined, "s"))
    const content = await engineContent(engine)
    expect(content.length).toBe(6 << 20)
    sameBytes(content.subarray(0, 4 << 20), snapshotted)
    expect(content.subarray(4 << 20).every((b) => b === 0)).toBe(true)
  })
})

describe("compressed packing after a free (found by the property below)", () => {
  it("does not pack compressed data into a freed cluster that became an L2 table", async () => {
    const file = dir.path("packing.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=1024", file, "320k")
    const { engine, save } = await openEngine(file)
    const data = pattern(1024, 1)
    data.fill(7, 0, 512)
    await run(engine.writeCompressed(128 * 1024, data))
    await run(engine.writeZeroes(128 * 1024, 1024, true))
    await run(engine.writeCompressed(0, data))
    await run(engine.write(50, pattern(900, 1)))
    await run(engine.flush())
    await save(file)
    clean(file)
  })
})

type Op =
  | { readonly op: "write"; readonly cluster: number; readonly clusters: number; readonly seed: number }
  | { readonly op: "compressed"; readonly cluster: number; readonly seed: number }
  | { readonly op: "zero"; readonly cluster: number; readonly clusters: number }
  | { readonly op: "create" }
  | { readonly op: "apply"; readonly pick: number }
  | { readonly op: "delete"; readonly pick: number }

const CS = 1024
const CLUSTERS = 320

describe("snapshot property", () => {
  it("random writes with snapshots taken, reverted to and deleted match a model, and the image stays check-clean", async () => {
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant("write" as const), cluster: fc.nat(CLUSTERS - 1), clusters: fc.integer({ min: 1, max: 40 }), seed: fc.integer({ min: 1 }) }),
      fc.record({ op: fc.constant("compressed" as const), cluster: fc.nat(CLUSTERS - 1), seed: fc.integer({ min: 1 }) }),
      fc.record({ op: fc.constant("zero" as const), cluster: fc.nat(CLUSTERS - 1), clusters: fc.integer({ min: 1, max: 40 }) }),
      fc.constant({ op: "create" as const }),
      fc.record({ op: fc.constant("apply" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("delete" as const), pick: fc.nat() })
    )
    let round = 0
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 14 }), async (ops) => {
        const file = dir.path(`prop-${round++}.qcow2`)
        qemuImg("create", "-q", "-f", "qcow2", "-o", `cluster_size=${CS}`, file, String(CLUSTERS * CS))
        const { engine, save } = await openEngine(file)
        let active = new Uint8Array(CLUSTERS * CS)
        const model = new Map<string, Uint8Array>()
        let names = 0
        for (const o of ops) {
          switch (o.op) {
            case "write": {
              const n = Math.min(o.clusters, CLUSTERS - o.cluster)
              const data = pattern(n * CS - 100, o.seed)
              await run(engine.write(o.cluster * CS + 50, data))
              active.set(data, o.cluster * CS + 50)
              break
            }
            case "compressed": {
              const data = pattern(CS, o.seed)
              data.fill(7, 0, CS / 2)
              // Compressed writes go to unallocated clusters only (as in QEMU): unmap first.
              await run(engine.writeZeroes(o.cluster * CS, CS, true))
              await run(engine.writeCompressed(o.cluster * CS, data))
              active.set(data, o.cluster * CS)
              break
            }
            case "zero": {
              const n = Math.min(o.clusters, CLUSTERS - o.cluster)
              await run(engine.writeZeroes(o.cluster * CS, n * CS, true))
              active.fill(0, o.cluster * CS, (o.cluster + n) * CS)
              break
            }
            case "create": {
              const name = `s${names++}`
              await run(engine.createSnapshot(name, T0))
              model.set(name, new Uint8Array(active))
              break
            }
            case "apply":
            case "delete": {
              const all = [...model.keys()]
              if (all.length === 0) break
              const name = all[o.pick % all.length]!
              if (o.op === "apply") {
                await run(engine.applySnapshot(name))
                active = new Uint8Array(model.get(name)!)
              } else {
                const id = engine.snapshots.entries.find((s) => s.name === name)!.id
                await run(engine.deleteSnapshot(id, name))
                model.delete(name)
              }
              break
            }
          }
        }
        await run(engine.flush())
    await save(file)
        expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
        sameBytes(qemuContent(file), active)
        for (const [name, content] of model) sameBytes(qemuContent(file, name), content)
        expect(execFileSync("qemu-img", ["snapshot", "-l", file], { encoding: "utf8" }).split("\n").length).toBe(model.size > 0 ? model.size + 3 : 1)
      }),
      { numRuns: 25 }
    )
  }, 120_000)
})
