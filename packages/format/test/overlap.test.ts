import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { OverlapIndex, type MetadataKind } from "../src/index.js"

/** QEMU's order of the structures an overlap reports. */
const ORDER: ReadonlyArray<MetadataKind> = [
  "qcow2_header",
  "active L1 table",
  "refcount table",
  "snapshot table",
  "inactive L1 table",
  "active L2 table",
  "refcount block",
  "inactive L2 table",
  "bitmap directory"
]
type RangeKind = "active L1 table" | "refcount table" | "snapshot table" | "inactive L1 table" | "bitmap directory"
type ClusterKind = "active L2 table" | "refcount block" | "inactive L2 table"
const RANGE_KINDS: ReadonlyArray<RangeKind> = ["active L1 table", "refcount table", "snapshot table", "inactive L1 table", "bitmap directory"]
const CLUSTER_KINDS: ReadonlyArray<ClusterKind> = ["active L2 table", "refcount block", "inactive L2 table"]

/** The overlap check spelled out: every kind in order, every range and table compared at cluster granularity. */
class ModelIndex {
  readonly ranges = new Map<RangeKind, Array<{ offset: number; length: number }>>()
  readonly clusters = new Map<ClusterKind, Set<number>>(CLUSTER_KINDS.map((k) => [k, new Set<number>()]))
  constructor(readonly cs: number) {}
  find(offset: number, length: number, ignore: ReadonlyArray<MetadataKind>): MetadataKind | undefined {
    if (length <= 0) return undefined
    const first = Math.floor(offset / this.cs)
    const end = Math.ceil((offset + length) / this.cs)
    for (const kind of ORDER) {
      if (ignore.includes(kind)) continue
      if (kind === "qcow2_header") {
        if (first === 0) return kind
      } else if ((CLUSTER_KINDS as ReadonlyArray<string>).includes(kind)) {
        for (const c of this.clusters.get(kind as ClusterKind)!) if (c >= first && c < end) return kind
      } else {
        for (const r of this.ranges.get(kind as RangeKind) ?? []) if (r.length > 0 && first * this.cs < r.offset + r.length && r.offset < end * this.cs) return kind
      }
    }
    return undefined
  }
}

describe("OverlapIndex", () => {
  const cs = 65536
  const index = () => {
    const i = new OverlapIndex(cs)
    i.setRanges("active L1 table", [{ offset: 3 * cs, length: 16 }])
    i.setRanges("refcount table", [{ offset: cs, length: cs }])
    i.setRanges("inactive L1 table", [{ offset: 9 * cs, length: 8 }, { offset: 11 * cs, length: 8 }])
    i.addCluster("active L2 table", 4 * cs)
    i.addCluster("refcount block", 2 * cs)
    return i
  }

  it("finds what the overlap check spelled out finds, over any sequence of changes (property)", () => {
    const size = 512
    const range = fc.record({ offset: fc.nat({ max: 14 * size }), length: fc.nat({ max: 3 * size }) })
    const change = fc.oneof(
      fc.record({ op: fc.constant("ranges" as const), kind: fc.constantFrom(...RANGE_KINDS), ranges: fc.array(range, { maxLength: 3 }) }),
      fc.record({ op: fc.constantFrom("add" as const, "remove" as const), kind: fc.constantFrom(...CLUSTER_KINDS), cluster: fc.nat({ max: 12 }) }),
      fc.record({ op: fc.constant("clear" as const), kind: fc.constantFrom(...CLUSTER_KINDS) })
    )
    const query = fc.record({ offset: fc.nat({ max: 16 * size }), length: fc.nat({ max: 4 * size }), ignore: fc.subarray([...ORDER], { maxLength: 3 }) })
    fc.assert(
      fc.property(fc.array(fc.tuple(change, fc.array(query, { minLength: 1, maxLength: 4 })), { maxLength: 25 }), (steps) => {
        const index = new OverlapIndex(size)
        const model = new ModelIndex(size)
        for (const [c, queries] of steps) {
          if (c.op === "ranges") {
            index.setRanges(c.kind, c.ranges)
            model.ranges.set(c.kind, c.ranges)
          } else if (c.op === "add") {
            index.addCluster(c.kind, c.cluster * size)
            if (c.cluster > 0) model.clusters.get(c.kind)!.add(c.cluster)
          } else if (c.op === "remove") {
            index.removeCluster(c.kind, c.cluster * size)
            model.clusters.get(c.kind)!.delete(c.cluster)
          } else {
            index.clearClusters(c.kind)
            model.clusters.get(c.kind)!.clear()
          }
          for (const q of queries) expect(index.find(q.offset, q.length, q.ignore)).toBe(model.find(q.offset, q.length, q.ignore))
        }
      }),
      { numRuns: 1000 }
    )
  })

  it("still finds a cluster indexed under two kinds once one of them lets it go", () => {
    const i = new OverlapIndex(cs)
    i.addCluster("active L2 table", 5 * cs)
    i.addCluster("refcount block", 5 * cs)
    i.removeCluster("active L2 table", 5 * cs)
    expect(i.find(5 * cs, 1)).toBe("refcount block")
    i.clearClusters("refcount block")
    expect(i.find(5 * cs, 1)).toBeUndefined()
  })

  it("names the structure a range touches, at cluster granularity", () => {
    const i = index()
    expect(i.find(0, 1)).toBe("qcow2_header")
    expect(i.find(cs + 100, 1)).toBe("refcount table")
    expect(i.find(2 * cs + cs - 1, 1)).toBe("refcount block")
    expect(i.find(3 * cs + 4096, 512)).toBe("active L1 table")
    expect(i.find(4 * cs, cs)).toBe("active L2 table")
    expect(i.find(11 * cs + 100, 1)).toBe("inactive L1 table")
    expect(i.find(5 * cs, 4 * cs)).toBeUndefined()
    expect(i.find(5 * cs, 0)).toBeUndefined()
  })

  it("reports the first structure in QEMU's order and honours ignore", () => {
    const i = index()
    expect(i.find(0, 5 * cs)).toBe("qcow2_header")
    expect(i.find(2 * cs, 3 * cs)).toBe("active L1 table")
    expect(i.find(4 * cs, cs, ["active L2 table"])).toBeUndefined()
  })

  it("follows tables as they come and go", () => {
    const i = index()
    i.removeCluster("active L2 table", 4 * cs)
    expect(i.find(4 * cs, cs)).toBeUndefined()
    i.addCluster("active L2 table", 100 * cs)
    expect(i.hasCluster("active L2 table", 100 * cs + 5)).toBe(true)
    expect(i.find(50 * cs, 1000 * cs)).toBe("active L2 table")
    i.setRanges("active L1 table", [{ offset: 7 * cs, length: cs }])
    expect(i.find(3 * cs, 1)).toBeUndefined()
    expect(i.find(7 * cs, 1)).toBe("active L1 table")
    i.addCluster("refcount block", 2 ** 60)
    expect(i.find(2 ** 52, cs)).toBeUndefined()
  })

  it("changes its version with every change, so remembered answers can be trusted while it does not", () => {
    const i = index()
    const changes: ReadonlyArray<(i: OverlapIndex) => void> = [
      (i) => i.addCluster("refcount block", 20 * cs),
      (i) => i.removeCluster("active L2 table", 4 * cs),
      (i) => i.clearClusters("refcount block"),
      (i) => i.setRanges("refcount table", [{ offset: cs, length: 2 * cs }]),
      (i) => i.setInactiveL1Tables([]),
      (i) => i.setInactiveL2Tables([30 * cs])
    ]
    for (const change of changes) {
      const before = i.version
      i.find(0, 10 * cs)
      expect(i.version).toBe(before)
      change(i)
      expect(i.version).not.toBe(before)
    }
  })

  it("indexes the snapshots' L2 tables only while inactive L2 tables are checked, after their L1 tables are read", () => {
    const plain = index()
    plain.setInactiveL1Tables([{ offset: 11 * cs, entries: 2 }])
    expect(plain.inactiveL2Ready).toBe(true)
    const checked = new OverlapIndex(cs, true)
    checked.setInactiveL1Tables([{ offset: 11 * cs, entries: 2 }])
    expect(checked.inactiveL2Ready).toBe(false)
    checked.setInactiveL2Tables([20 * cs, 0])
    expect(checked.inactiveL2Ready).toBe(true)
    expect(checked.find(20 * cs + 512, 512)).toBe("inactive L2 table")
    // Checked after the active L2 tables, as QEMU orders them.
    checked.addCluster("active L2 table", 20 * cs)
    expect(checked.find(20 * cs, cs)).toBe("active L2 table")
    expect(checked.find(20 * cs, cs, ["active L2 table"])).toBe("inactive L2 table")
    // A new snapshot table drops them until they are read again.
    checked.setInactiveL1Tables([])
    expect([checked.inactiveL2Ready, checked.find(20 * cs, cs, ["active L2 table"])]).toEqual([true, undefined])
  })
})
