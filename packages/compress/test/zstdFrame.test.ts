import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { compress as packageCompress, init as packageInit } from "@bokuweb/zstd-wasm"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { hasZstdMagic, walkZstdFrame, type ZstdFrame } from "../src/index.js"
import { concat, randomBytes, textBytes } from "./fixtures.js"
import { buildFrame, buildSkippable } from "./zstdFrameBuilder.js"

const hasZstdCli = (() => {
  try {
    execFileSync("zstd", ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

/** Compresses with the zstd command-line tool (checksums on by default). */
const zstdCli = (data: Uint8Array, args: ReadonlyArray<string> = []): Uint8Array => {
  const dir = mkdtempSync(join(tmpdir(), "qcow2-zstd-"))
  try {
    writeFileSync(join(dir, "in"), data)
    execFileSync("zstd", ["-q", "-f", ...args, join(dir, "in"), "-o", join(dir, "out.zst")])
    return new Uint8Array(readFileSync(join(dir, "out.zst")))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

const asFrame = (input: Uint8Array, offset = 0): ZstdFrame => {
  const r = walkZstdFrame(input, offset)
  if (r.kind !== "frame") throw new Error(`expected a frame, got ${r.kind}: ${"message" in r ? r.message : ""}`)
  return r
}

beforeAll(async () => {
  await packageInit()
})

describe("walkZstdFrame on hand-built frames", () => {
  it("reads a single-segment frame with one raw block", () => {
    const data = textBytes(200)
    const frame = buildFrame({ singleSegment: true, contentSize: 200, blocks: [{ type: "raw", data }] })
    const r = asFrame(concat(frame, randomBytes(50)))
    expect(r.length).toBe(frame.length)
    expect(r.headerLength).toBe(6)
    expect(r.contentSize).toBe(200)
    expect(r.windowSize).toBeUndefined()
    expect(r).toMatchObject({ blockCount: 1, rawBlocks: 1, rleBlocks: 0, compressedBlocks: 0, rawAndRleBytes: 200 })
  })

  it("reads raw and RLE blocks, window descriptor and every FCS width", () => {
    const blocks = [
      { type: "raw", data: textBytes(1000) },
      { type: "rle", byte: 0xab, size: 5000 },
      { type: "raw", data: randomBytes(300) },
      { type: "rle", byte: 0, size: 131072 }
    ] as const
    const total = 1000 + 5000 + 300 + 131072
    for (const fcsBytes of [2, 4, 8] as const) {
      const contentSize = fcsBytes === 2 ? 65000 : total
      const frame = buildFrame({ contentSize, fcsBytes, windowDescriptor: (7 << 3) | 2, blocks })
      const r = asFrame(frame)
      expect(r.length).toBe(frame.length)
      expect(r.contentSize).toBe(contentSize)
      expect(r.windowSize).toBe(2 ** 17 + 2 * 2 ** 14)
      expect(r).toMatchObject({ blockCount: 4, rawBlocks: 2, rleBlocks: 2, rawAndRleBytes: total })
    }
    const noSize = asFrame(buildFrame({ blocks }))
    expect(noSize.contentSize).toBeUndefined()
    expect(noSize.headerLength).toBe(6)
  })

  it("reads dictionary ids of 1, 2 and 4 bytes and the checksum", () => {
    for (const [dictionaryIdBytes, dictionaryId] of [
      [1, 0x7f],
      [2, 0x1234],
      [4, 0xdeadbeef]
    ] as const) {
      const frame = buildFrame({
        dictionaryId,
        dictionaryIdBytes,
        checksum: Uint8Array.of(1, 2, 3, 4),
        blocks: [{ type: "rle", byte: 1, size: 10 }]
      })
      const r = asFrame(frame)
      expect(r.dictionaryId).toBe(dictionaryId)
      expect(r.hasChecksum).toBe(true)
      expect(r.length).toBe(frame.length)
    }
  })

  it("reads skippable frames of every variant", () => {
    for (let variant = 0; variant < 16; variant++) {
      const skippable = buildSkippable(randomBytes(variant * 3, variant + 1), variant)
      const r = walkZstdFrame(concat(skippable, randomBytes(9)))
      expect(r).toEqual({ kind: "skippable", offset: 0, length: 8 + variant * 3, variant })
      expect(hasZstdMagic(skippable)).toBe(true)
    }
  })

  it("walks consecutive frames by offset", () => {
    const a = buildSkippable(randomBytes(5))
    const b = buildFrame({ singleSegment: true, contentSize: 4, blocks: [{ type: "raw", data: randomBytes(4) }] })
    const c = buildFrame({ blocks: [{ type: "rle", byte: 9, size: 70 }] })
    const all = concat(a, b, c, new Uint8Array(100))
    const lengths: Array<number> = []
    let offset = 0
    while (hasZstdMagic(all, offset)) {
      const r = walkZstdFrame(all, offset)
      if (r.kind !== "frame" && r.kind !== "skippable") throw new Error(r.message)
      lengths.push(r.length)
      offset += r.length
    }
    expect(lengths).toEqual([a.length, b.length, c.length])
    expect(hasZstdMagic(all, offset)).toBe(false)
  })

  it("reports every proper prefix of a frame as truncated", () => {
    const frames = [
      buildFrame({
        contentSize: 3000,
        checksum: Uint8Array.of(9, 9, 9, 9),
        dictionaryId: 5,
        blocks: [
          { type: "raw", data: randomBytes(1000) },
          { type: "rle", byte: 3, size: 2000 }
        ]
      }),
      buildSkippable(randomBytes(20))
    ]
    for (const frame of frames) {
      for (let n = 0; n < frame.length; n++) {
        const r = walkZstdFrame(frame.subarray(0, n))
        expect(r.kind, `prefix of ${n} bytes`).toBe("truncated")
      }
      expect(walkZstdFrame(frame).kind).not.toBe("truncated")
    }
  })

  it("rejects a bad magic, the reserved bit, the reserved block type and oversized blocks", () => {
    expect(walkZstdFrame(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfe, 0, 0, 1, 0, 0)).kind).toBe("invalid")
    expect(walkZstdFrame(new Uint8Array(64)).kind).toBe("invalid")
    const reserved = buildFrame({ reservedBit: true, blocks: [{ type: "rle", byte: 1, size: 1 }] })
    expect(walkZstdFrame(reserved).kind).toBe("invalid")
    const reservedType = buildFrame({ blocks: [{ type: "reserved", size: 4 }] })
    expect(walkZstdFrame(reservedType).kind).toBe("invalid")
    const huge = buildFrame({ blocks: [{ type: "rle", byte: 1, size: 131073 }] })
    expect(walkZstdFrame(huge).kind).toBe("invalid")
    expect(walkZstdFrame(new Uint8Array(4), 9).kind).toBe("invalid")
  })

  it("never reads past the input or throws on arbitrary bytes (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.boolean(), (tail, withMagic) => {
        const input = withMagic ? concat(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd), tail) : tail
        const r = walkZstdFrame(input)
        if (r.kind === "frame" || r.kind === "skippable") expect(r.length).toBeLessThanOrEqual(input.length)
      }),
      { numRuns: 2000 }
    )
  })
})

describe("walkZstdFrame on frames from real encoders", () => {
  it("finds the exact end of frames from the @bokuweb/zstd-wasm package, followed by padding", () => {
    for (const size of [512, 65536, 300_000, 2 * 1024 * 1024]) {
      for (const data of [textBytes(size), randomBytes(size), new Uint8Array(size)]) {
        const frame = packageCompress(data, 3)
        const r = asFrame(concat(frame, new Uint8Array(700)))
        expect(r.length).toBe(frame.length)
        expect(r.contentSize).toBe(size)
      }
    }
  })

  it.skipIf(!hasZstdCli)("finds the end of zstd CLI frames with checksum, many blocks, raw and RLE blocks", () => {
    const random = zstdCli(randomBytes(300_000))
    const r1 = asFrame(concat(random, randomBytes(33)))
    expect(r1.length).toBe(random.length)
    expect(r1.hasChecksum).toBe(true)
    expect(r1.blockCount).toBeGreaterThanOrEqual(3)
    expect(r1.rawBlocks).toBeGreaterThanOrEqual(2)

    const zeros = zstdCli(new Uint8Array(300_000))
    const r2 = asFrame(concat(zeros, new Uint8Array(512)))
    expect(r2.length).toBe(zeros.length)
    expect(r2.blockCount).toBeGreaterThanOrEqual(3)
    expect(r2.rleBlocks).toBeGreaterThanOrEqual(1)

    const text = zstdCli(textBytes(200_000), ["--no-check", "-19"])
    const r3 = asFrame(text)
    expect(r3.length).toBe(text.length)
    expect(r3.hasChecksum).toBe(false)
    expect(r3.compressedBlocks).toBeGreaterThanOrEqual(2)
  })
})
