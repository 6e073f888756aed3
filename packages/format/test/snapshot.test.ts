import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import {
  FormatError,
  decodeImageHeader,
  decodeSnapshotTable,
  encodeSnapshotTable,
  readL1Entry,
  snapshotTableRefusal,
  snapshotTableSize,
  type SnapshotEntry
} from "../src/index.js"
import { qemuImg, qemuInfo, qemuIo, readBytes, scratch } from "./qemu.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

const fail = (f: () => unknown): FormatError => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError)
    return e as FormatError
  }
  throw new Error("expected a FormatError")
}

/** Strings without NUL that survive UTF-8 round trips. */
const text = (maxLength: number) => fc.string({ unit: "grapheme", maxLength })

const snapshotEntry = fc
  .record({
    l1TableOffset: fc.integer({ min: 0, max: 2 ** 37 - 1 }).map((n) => n * 65536),
    l1Size: fc.nat({ max: 0xffffffff }),
    id: text(20),
    name: text(60),
    dateSeconds: fc.nat({ max: 0xffffffff }),
    dateNanoseconds: fc.nat({ max: 999_999_999 }),
    vmClockNanoseconds: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    vmStateSize: fc.oneof(fc.nat({ max: 0xffffffff }), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })),
    diskSize: fc.option(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), { nil: undefined }),
    icount: fc.option(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), { nil: undefined }),
    extraData: fc.uint8Array({ maxLength: 40 })
  })
  .map((r): SnapshotEntry => {
    // like a decoded entry: fields present whenever the raw extra data covers them
    const n = r.extraData.length
    const diskSize = r.diskSize ?? (n >= 16 ? 0 : undefined)
    const icount = r.icount ?? (n >= 24 ? -1n : undefined)
    const { diskSize: _d, icount: _i, ...rest } = r
    return { ...rest, ...(diskSize !== undefined ? { diskSize } : {}), ...(icount !== undefined ? { icount } : {}) }
  })

describe("snapshot table", () => {
  it("round-trip (property): fields survive, extra data is preserved, sizes agree", () => {
    fc.assert(
      fc.property(fc.array(snapshotEntry, { maxLength: 6 }), (snapshots) => {
        const bytes = encodeSnapshotTable(snapshots)
        // QEMU's snapshots_size: the last entry without its padding.
        expect(Math.ceil(snapshotTableSize(snapshots) / 8) * 8).toBe(bytes.length)
        expect(snapshotTableSize(snapshots) > bytes.length - 8 || snapshots.length === 0).toBe(true)
        expect(bytes.length % 8).toBe(0)
        const { snapshots: back, byteLength } = decodeSnapshotTable(bytes, snapshots.length)
        expect(byteLength).toBe(bytes.length)
        back.forEach((b, i) => {
          const s = snapshots[i]!
          const { extraData, diskSize, icount, ...fields } = b
          const { extraData: e0, diskSize: d0, icount: i0, ...fields0 } = s
          expect(fields).toEqual(fields0)
          if (d0 !== undefined) expect(diskSize).toBe(d0)
          if (i0 !== undefined) expect(icount).toBe(i0)
          // bytes of the raw extra data beyond the decoded fields are kept
          expect(extraData.length).toBeGreaterThanOrEqual(e0.length)
          expect(Array.from(extraData.subarray(24))).toEqual(Array.from(e0.subarray(24)))
        })
        // decoding and re-encoding is the identity on bytes
        expect(Buffer.from(encodeSnapshotTable(back)).equals(Buffer.from(bytes))).toBe(true)
      })
    )
  })

  it("short extra data: vm_state_size comes from the 32-bit field", () => {
    const s: SnapshotEntry = {
      l1TableOffset: 0x50000, l1Size: 1, id: "1", name: "a", dateSeconds: 1, dateNanoseconds: 2,
      vmClockNanoseconds: 3n, vmStateSize: 1234, extraData: new Uint8Array(0)
    }
    const bytes = encodeSnapshotTable([s])
    expect(bytes.length).toBe(48)
    expect(decodeSnapshotTable(bytes, 1).snapshots[0]).toEqual(s)
  })

  it("hostile tables: every length is bounded by the buffer", () => {
    const s: SnapshotEntry = {
      l1TableOffset: 0x50000, l1Size: 1, id: "1", name: "snap", dateSeconds: 1, dateNanoseconds: 2,
      vmClockNanoseconds: 3n, vmStateSize: 0, diskSize: 1 << 20, icount: -1n, extraData: new Uint8Array(0)
    }
    const bytes = encodeSnapshotTable([s])
    const dv = new DataView(bytes.buffer)
    expect(fail(() => decodeSnapshotTable(bytes, 2)).reason).toBe("Truncated")
    expect(fail(() => decodeSnapshotTable(bytes.subarray(0, 39), 1)).reason).toBe("Truncated")
    const extra = bytes.slice()
    new DataView(extra.buffer).setUint32(36, 0xffffffff)
    expect(fail(() => decodeSnapshotTable(extra, 1)).field).toBe("snapshot_extra_data")
    const name = bytes.slice()
    new DataView(name.buffer).setUint16(14, 0xffff)
    expect(fail(() => decodeSnapshotTable(name, 1)).reason).toBe("Truncated")
    expect(fail(() => decodeSnapshotTable(bytes, 65537)).reason).toBe("InvalidField")
    const huge = bytes.slice()
    new DataView(huge.buffer).setUint32(40, 0xffffffff)
    expect(fail(() => decodeSnapshotTable(huge, 1)).reason).toBe("OffsetTooLarge")
    expect(dv.getUint32(36)).toBe(24)
  })

  it("reads tables written by qemu-img snapshot -c and re-encodes them byte for byte", () => {
    qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", "s.qcow2", "10M")
    qemuIo(tmp.dir, "s.qcow2", "write -P 7 0 64k")
    qemuImg(tmp.dir, "snapshot", "-c", "s1", "s.qcow2")
    qemuImg(tmp.dir, "snapshot", "-c", "second snapshot", "s.qcow2")
    const bytes = readBytes(tmp.path("s.qcow2"))
    const { header } = decodeImageHeader(bytes)
    expect(header.nbSnapshots).toBe(2)
    const table = bytes.subarray(header.snapshotsOffset)
    const { snapshots, byteLength } = decodeSnapshotTable(table, header.nbSnapshots)
    const info = qemuInfo(tmp.dir, "s.qcow2").snapshots as any[]
    expect(snapshots.map((s) => [s.id, s.name, s.dateSeconds, s.dateNanoseconds, s.vmStateSize, s.diskSize, Number(s.icount)])).toEqual(
      info.map((i) => [i.id, i.name, i["date-sec"], i["date-nsec"], i["vm-state-size"], 10 * 1024 * 1024, i.icount])
    )
    for (const s of snapshots) {
      expect(s.extraData.length).toBe(24)
      expect(s.l1Size).toBe(header.l1Size)
      expect(readL1Entry(bytes.subarray(s.l1TableOffset), 0).l2Offset).toBe(readL1Entry(bytes.subarray(header.l1TableOffset), 0).l2Offset)
    }
    expect(Buffer.from(encodeSnapshotTable(snapshots)).equals(Buffer.from(table.subarray(0, byteLength)))).toBe(true)
  })
})

describe("snapshotTableRefusal (QEMU's limits when opening)", () => {
  const entry = (extraLen: number, name = "s"): Uint8Array => {
    const bytes = new Uint8Array(Math.ceil((40 + extraLen + 1 + name.length) / 8) * 8)
    const view = new DataView(bytes.buffer)
    view.setUint16(12, 1)
    view.setUint16(14, name.length)
    view.setUint32(36, extraLen)
    bytes[40 + extraLen] = 0x31
    bytes.set(new TextEncoder().encode(name), 41 + extraLen)
    return bytes
  }
  const concat = (parts: Uint8Array[]): Uint8Array => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) + 64)
    let off = 0
    for (const p of parts) {
      out.set(p, off)
      off += p.length
    }
    return out
  }

  it("accepts tables within the limits", () => {
    expect(snapshotTableRefusal(concat([entry(24), entry(1024)]), 2)).toBeUndefined()
  })

  it("refuses more than 1024 bytes of extra data in an entry, naming it", () => {
    expect(snapshotTableRefusal(concat([entry(24), entry(1025)]), 2)).toBe(
      "Too much extra metadata in snapshot table entry 1\nYou can force-remove this extra metadata with qemu-img check -r all"
    )
  })

  it("refuses a table over 64 MiB, counting the overhanging snapshots", () => {
    const big = entry(0, "x".repeat(65535))
    const parts = Array.from({ length: 1025 }, () => big)
    expect(snapshotTableRefusal(concat(parts), 1026)).toBe("Snapshot table is too big\nYou can force-remove all 3 overhanging snapshots with qemu-img check -r all")
  })
})
