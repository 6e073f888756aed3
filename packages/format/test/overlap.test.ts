import { describe, expect, it } from "vitest"
import { OverlapIndex } from "../src/index.js"

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
