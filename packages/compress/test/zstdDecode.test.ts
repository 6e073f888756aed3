/**
 * The TypeScript zstd decoder (the fallback where the wasm cannot be
 * instantiated) against libzstd: frames made by the wasm build at many levels
 * and sizes, frames with checksums made by the zstd command, mutated frames,
 * and QEMU-style clusters through the codec.
 */
import { execFileSync } from "node:child_process"
import fc from "fast-check"
import { beforeAll, describe, expect, it } from "vitest"
import { DecompressionError } from "../src/index.js"
import { makeClusterKernels } from "../src/internal/codec.js"
import { portableDeflateKernels } from "../src/internal/deflatePortable.js"
import { decodeZstdFrame, xxh64 } from "../src/internal/zstdDecode.js"
import type { ZstdKernel } from "../src/internal/zstdKernel.js"
import { zstdKernel } from "../src/internal/zstdModule.js"
import { concat, expectSameBytes, padToSector, periodicBytes, randomBytes, textBytes, thrown } from "./fixtures.js"
import { buildFrame, buildSkippable } from "./zstdFrameBuilder.js"

const hasZstdCommand = (() => {
  try {
    execFileSync("zstd", ["--version"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

let wasm: ZstdKernel
beforeAll(async () => {
  wasm = await zstdKernel()
})

const mixed = (size: number, seed: number): Uint8Array => {
  const data = textBytes(size, seed)
  data.set(randomBytes(size >> 2, seed + 1), size >> 3)
  data.fill(0, size - (size >> 3))
  return data
}

const decodes = (frame: Uint8Array, data: Uint8Array, label: string): void => {
  const out = new Uint8Array(data.length)
  expect(decodeZstdFrame(frame, out), label).toBe(data.length)
  expectSameBytes(out, data, label)
}

describe("TypeScript zstd decoder", () => {
  it("decodes what the libzstd wasm writes: every level band, cluster sizes up to 2 MiB, many kinds of data", () => {
    for (const size of [512, 4096, 65536, 2 * 1024 * 1024]) {
      const kinds = [
        ["text", textBytes(size, 3)],
        ["mixed", mixed(size, 5)],
        ["periodic", periodicBytes(size, 3000, 2)],
        ["zeros", new Uint8Array(size)],
        ["random", randomBytes(size, 8)]
      ] as const
      for (const [name, data] of kinds) {
        for (const level of size > 65536 ? [-5, 3, 12] : [-50, -1, 1, 3, 6, 12, 19, 22]) {
          const frame = wasm.compress(data, size + 1024, level)!
          decodes(frame, data, `${name} ${size} level ${level}`)
        }
      }
    }
  })

  it("accepts and rejects mutated frames as libzstd does, never throws, never writes past the output", () => {
    const size = 16384
    const bases = [1, 3, 19].map((level) => wasm.compress(mixed(size, level), size, level)!)
    fc.assert(
      fc.property(
        fc.nat(bases.length - 1),
        fc.array(fc.tuple(fc.nat(100_000), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }),
        (which, edits) => {
          const frame = bases[which].slice()
          for (const [i, v] of edits) frame[i % frame.length] = v
          const ours = new Uint8Array(size + 64)
          const theirs = new Uint8Array(size + 64)
          const n = decodeZstdFrame(frame, ours.subarray(0, size))
          expect(n).toBeLessThanOrEqual(size)
          const m = wasm.decompressFrame(frame, theirs.subarray(0, size))
          expect(ours.subarray(size).every((b) => b === 0)).toBe(true)
          // Both accept or both reject (the error codes may differ); accepted frames decode alike.
          expect(n >= 0, `ours ${n}, libzstd ${m}`).toBe(m >= 0)
          if (n >= 0) {
            expect(n).toBe(m)
            expectSameBytes(ours.subarray(0, n), theirs.subarray(0, m))
          }
        }
      ),
      { numRuns: 500, seed: 20261206 }
    )
  })

  it("reports content that does not fit (-70), a dictionary (-32) and a truncated frame (-20)", () => {
    const data = textBytes(65536, 4)
    const frame = wasm.compress(data, 65536, 3)!
    expect(decodeZstdFrame(frame, new Uint8Array(32768))).toBe(-70)
    expect(decodeZstdFrame(frame.subarray(0, frame.length - 3), new Uint8Array(65536))).toBe(-20)
    const withDictionary = buildFrame({ dictionaryId: 7, blocks: [{ type: "raw", data: Uint8Array.of(1, 2) }] })
    expect(decodeZstdFrame(withDictionary, new Uint8Array(512))).toBe(-32)
    const raw = buildFrame({ contentSize: 700, blocks: [{ type: "raw", data: randomBytes(300) }, { type: "rle", byte: 9, size: 400 }] })
    const out = new Uint8Array(700)
    expect(decodeZstdFrame(raw, out)).toBe(700)
    expect(out.subarray(300).every((b) => b === 9)).toBe(true)
    // Frame_Content_Size that the blocks do not produce.
    expect(decodeZstdFrame(buildFrame({ contentSize: 701, blocks: [{ type: "rle", byte: 1, size: 700 }] }), new Uint8Array(1024))).toBe(-20)
  })

  it("XXH64 of the empty input is the published value", () => {
    expect(xxh64(new Uint8Array(0)).toString(16)).toBe("ef46db3751d8e999")
  })

  it.skipIf(!hasZstdCommand)("checks content checksums as written by the zstd command (all input lengths mod 32)", () => {
    for (const length of [1, 3, 4, 7, 8, 12, 31, 32, 33, 45, 63, 64, 100, 1000, 65536, 300_001]) {
      const data = length > 1000 ? mixed(length, length) : randomBytes(length, length)
      const frame = new Uint8Array(execFileSync("zstd", ["-c", "-q", "-3", "--check"], { input: data }))
      decodes(frame, data, `length ${length}`)
      frame[frame.length - 1] ^= 0x10
      expect(decodeZstdFrame(frame, new Uint8Array(length))).toBe(-22)
    }
    const data = mixed(1 << 20, 9)
    for (const level of ["--fast=20", "-1", "-9", "-19", "--ultra", "-22", "--long=20"]) {
      const args = level === "--ultra" ? ["--ultra", "-20"] : [level]
      decodes(new Uint8Array(execFileSync("zstd", ["-c", "-q", ...args, "--check"], { input: data })), data, level)
    }
  })

  it("serves the cluster codec: padded, multi-frame and skippable-frame clusters (QEMU's semantics)", () => {
    const decodeOnly: ZstdKernel = {
      compress: () => {
        throw new Error("zstd compression needs WebAssembly")
      },
      decompressFrame: decodeZstdFrame
    }
    const codec = makeClusterKernels(portableDeflateKernels(), () => decodeOnly)
    const data = mixed(65536, 21)
    const out = new Uint8Array(65536)
    codec.decompress(1, padToSector(wasm.compress(data, 65535, 3)!, randomBytes(512, 1)), out)
    expectSameBytes(out, data)
    const halves = [data.subarray(0, 32768), data.subarray(32768)].map((h) => wasm.compress(h, 65536, 5)!)
    out.fill(0)
    codec.decompress(1, concat(buildSkippable(randomBytes(40)), halves[0], buildSkippable(new Uint8Array(0), 3), halves[1]), out)
    expectSameBytes(out, data)
    const error = thrown(() => codec.decompress(1, halves[0], out))
    expect(error).toBeInstanceOf(DecompressionError)
    expect((error as DecompressionError).reason).toBe("ShortOutput")
  })
})
