import * as zlib from "node:zlib"
import { compress as packageCompress, decompress as packageDecompress, init as packageInit } from "@bokuweb/zstd-wasm"
import { Effect, Exit } from "effect"
import fc from "fast-check"
import { deflateRaw as pakoDeflateRaw, inflateRaw as pakoInflateRaw } from "pako"
import { beforeAll, describe, expect, it } from "vitest"
import { ClusterCodec, CompressionError, type CompressionType, DecompressionError } from "../src/index.js"
import { type ClusterKernels, makeClusterCodec } from "../src/internal/codec.js"
import { portableDeflateKernels } from "../src/internal/deflatePortable.js"
import { zstdKernel } from "../src/internal/zstdModule.js"
import { NodeClusterCodec, PortableClusterCodec } from "../src/node.js"
import {
  CLUSTER_SIZES,
  concat,
  expectSameBytes,
  loadNativeZstd,
  makeCodecs,
  padToSector,
  periodicBytes,
  randomBytes,
  textBytes,
  thrown
} from "./fixtures.js"
import { buildFrame, buildSkippable } from "./zstdFrameBuilder.js"

const TYPES = [0, 1] as const satisfies ReadonlyArray<CompressionType>
const typeName = (t: CompressionType) => (t === 0 ? "deflate" : "zstd")

let codecs: ReadonlyArray<readonly [string, ClusterKernels]> = []
beforeAll(async () => {
  codecs = await makeCodecs()
  await packageInit()
})

const decodeError = (codec: ClusterKernels, type: CompressionType, input: Uint8Array, size: number) => {
  const error = thrown(() => codec.decompress(type, input, new Uint8Array(size)))
  expect(error).toBeInstanceOf(DecompressionError)
  return error as DecompressionError
}

/** Raw deflate as QEMU writes it (window 2^12, memLevel 9, level 6), by node:zlib. */
const qemuDeflate = (data: Uint8Array, windowBits = 12): Uint8Array =>
  new Uint8Array(zlib.deflateRawSync(data, { level: 6, windowBits, memLevel: 9 }))

describe("round trips", () => {
  it("every cluster size, both codecs, compressed by each layer and decoded by each layer", () => {
    for (const size of CLUSTER_SIZES) {
      const data = textBytes(size, size)
      for (const type of TYPES) {
        for (const [encoderName, encoder] of codecs) {
          const compressed = encoder.compress(type, data)
          expect(compressed, `${encoderName} ${typeName(type)} ${size}`).toBeDefined()
          expect(compressed!.length).toBeLessThanOrEqual(size - 1)
          for (const [decoderName, decoder] of codecs) {
            const out = new Uint8Array(size)
            decoder.decompress(type, padToSector(compressed!), out)
            expectSameBytes(out, data, `${encoderName} -> ${decoderName} ${typeName(type)} ${size}`)
          }
        }
      }
    }
  })

  it("all-zero clusters of every size", () => {
    for (const size of CLUSTER_SIZES) {
      for (const type of TYPES) {
        for (const [, codec] of codecs) {
          const compressed = codec.compress(type, new Uint8Array(size))!
          expect(compressed.length).toBeLessThan(Math.max(64, size / 100))
          const out = new Uint8Array(size).fill(0xee)
          codec.decompress(type, compressed, out)
          expect(out.every((b) => b === 0)).toBe(true)
        }
      }
    }
  })

  it("incompressible clusters of every size give undefined (stored uncompressed, as QEMU)", () => {
    for (const size of CLUSTER_SIZES) {
      const data = randomBytes(size, size + 1)
      for (const type of TYPES) {
        for (const [name, codec] of codecs) {
          expect(codec.compress(type, data), `${name} ${typeName(type)} ${size}`).toBeUndefined()
        }
      }
    }
  })

  it("node and portable deflate output both decode with zlib and pako (byte formats agree)", () => {
    const data = textBytes(65536)
    for (const [, codec] of codecs) {
      const compressed = codec.compress(0, data)!
      expectSameBytes(new Uint8Array(zlib.inflateRawSync(compressed)), data)
      expectSameBytes(pakoInflateRaw(compressed), data)
    }
  })

  it("respects the level option", () => {
    const data = textBytes(65536)
    for (const [, codec] of codecs) {
      const fast = codec.compress(0, data, { level: 1 })!
      const best = codec.compress(0, data, { level: 9 })!
      expect(best.length).toBeLessThan(fast.length)
      expect(codec.compress(0, data, { level: 0 })).toBeUndefined()
      const zfast = codec.compress(1, data, { level: 1 })!
      const zbest = codec.compress(1, data, { level: 19 })!
      expect(zbest.length).toBeLessThan(zfast.length)
      const out = new Uint8Array(65536)
      codec.decompress(1, zbest, out)
      expectSameBytes(out, data)
    }
  })
})

describe("QEMU's compression rule (qcow2_co_pwritev_compressed_task)", () => {
  // QEMU compresses into a buffer of cluster_size - 1 bytes and stores the cluster compressed
  // only when that succeeds. zlib reports success (Z_STREAM_END) only with at least one byte to
  // spare, so deflate output must be at most cluster_size - 2 bytes; libzstd's streaming
  // compressor succeeds on an exact fit, so zstd output may be cluster_size - 1 bytes.
  // Random bytes followed by zeros: the deflate size grows one byte per random byte, so
  // sweeping the random length crosses the boundary exactly.
  const size = 4096
  const candidates = Array.from({ length: 60 }, (_, k) => {
    const data = new Uint8Array(size)
    data.set(randomBytes(size - 60 + k, 99))
    return data
  })

  it("deflate: compressed iff the uncapped stream is at most cluster_size - 2 bytes (node and pako)", () => {
    const [[, node], [, portable]] = codecs
    const seen = new Set<number>()
    for (const data of candidates) {
      const references = [
        [node, qemuDeflate(data)],
        [portable, pakoDeflateRaw(data, { level: 6, windowBits: -12, memLevel: 9 })]
      ] as const
      for (const [codec, reference] of references) {
        const result = codec.compress(0, data)
        if (reference.length <= size - 2) expectSameBytes(result, reference)
        else expect(result).toBeUndefined()
        seen.add(size - reference.length)
      }
    }
    expect(seen.has(2) && seen.has(1) && seen.has(0)).toBe(true)
  })

  it("zstd: compressed iff the uncapped frame (of the @bokuweb/zstd-wasm package; of libzstd for native zstd) is at most cluster_size - 1 bytes", async () => {
    const native = await loadNativeZstd()
    const outcomes = new Set<boolean>()
    for (let k = 0; k < 396; k += 3) {
      const data = textBytes(size, k)
      data.set(randomBytes(2900 + k * 3, k + 1))
      for (const [name, codec] of codecs) {
        const reference = name === "node" ? native.compress(data, 2 * size, 3)! : packageCompress(data, 3)
        const result = codec.compress(1, data)
        if (reference.length <= size - 1) expectSameBytes(result, reference)
        else expect(result).toBeUndefined()
        outcomes.add(result !== undefined)
      }
    }
    expect([...outcomes].sort()).toEqual([false, true])
  })
})

describe("deflate interop and trailing data", () => {
  it("decodes QEMU-style streams (window 12) followed by sector padding, garbage or the next cluster", () => {
    const size = 65536
    const data = textBytes(size, 5)
    const stream = qemuDeflate(data)
    const next = qemuDeflate(textBytes(size, 6))
    const inputs = [
      stream,
      padToSector(stream),
      padToSector(stream, randomBytes(512)),
      concat(stream, next),
      concat(stream, randomBytes(3000))
    ]
    for (const [, codec] of codecs) {
      for (const input of inputs) {
        const out = new Uint8Array(size)
        codec.decompress(0, input, out)
        expectSameBytes(out, data)
      }
    }
  })

  it("decodes window-15 streams with 8 KiB back-references (QEMU 7.2 does too)", () => {
    for (const size of [16384, 65536, 2 * 1024 * 1024]) {
      const data = periodicBytes(size, 8192)
      const stream = qemuDeflate(data, 15)
      for (const [, codec] of codecs) {
        const out = new Uint8Array(size)
        codec.decompress(0, padToSector(stream), out)
        expectSameBytes(out, data)
      }
    }
  })

  it("why the reader uses windowBits 15: a 12-bit inflater with chunked output rejects such streams", () => {
    const data = periodicBytes(65536, 8192)
    const stream = qemuDeflate(data, 15)
    expect(() => zlib.inflateRawSync(stream, { windowBits: 12, chunkSize: 16384 })).toThrow(/too far back/)
  })

  it("accepts a stream longer than the cluster and keeps the first cluster (as QEMU)", () => {
    const size = 4096
    const data = textBytes(size * 3, 11)
    const stream = qemuDeflate(data)
    for (const input of [stream, stream.subarray(0, Math.floor(stream.length * 0.6))]) {
      for (const [, codec] of codecs) {
        const out = new Uint8Array(size)
        codec.decompress(0, input, out)
        expectSameBytes(out, data.subarray(0, size))
      }
    }
  })

  it("one codec decodes good clusters after refusing bad ones (its inflate stream is kept from cluster to cluster)", () => {
    const size = 4096
    const good = textBytes(size, 21)
    const stream = padToSector(qemuDeflate(good))
    for (const [, codec] of codecs) {
      for (const bad of [Uint8Array.of(0x07, 0, 0, 0), qemuDeflate(textBytes(1000)), stream.subarray(0, 10)]) {
        expect(() => codec.decompress(0, bad, new Uint8Array(size))).toThrow()
        const out = new Uint8Array(size)
        codec.decompress(0, stream, out)
        expectSameBytes(out, good)
      }
    }
  })

  it("a stream that ends before the cluster is full is ShortOutput", () => {
    const stream = qemuDeflate(textBytes(3000))
    for (const [, codec] of codecs) {
      const error = decodeError(codec, 0, padToSector(stream, randomBytes(512)), 4096)
      expect(error.reason).toBe("ShortOutput")
      expect(error.compressionType).toBe(0)
    }
  })

  it("truncated input is ShortOutput", () => {
    const stream = qemuDeflate(textBytes(65536))
    for (const [, codec] of codecs) {
      for (const n of [0, 1, 100, stream.length >> 1, stream.length - 8]) {
        expect(decodeError(codec, 0, stream.subarray(0, n), 65536).reason).toBe("ShortOutput")
      }
    }
  })

  it("invalid data is Corrupt", () => {
    for (const [, codec] of codecs) {
      // BTYPE 11 (reserved) in the first block header
      expect(decodeError(codec, 0, Uint8Array.of(0x07, 0, 0, 0), 4096).reason).toBe("Corrupt")
      // a stored block whose LEN and NLEN disagree
      expect(decodeError(codec, 0, Uint8Array.of(0x01, 0x10, 0x00, 0x00, 0x00, 1, 2), 4096).reason).toBe("Corrupt")
      // a fixed-Huffman block whose first symbol copies from distance 1: nothing to copy from
      const early = Uint8Array.of(0x03, 0x02, 0x00, 0x00)
      expect(() => zlib.inflateRawSync(early)).toThrow(/distance too far back/)
      const error = decodeError(codec, 0, early, 4096)
      expect(error.reason).toBe("Corrupt")
      expect(error.message).toMatch(/distance too far back/)
    }
  })

  it("mutated streams: both layers agree, and only DecompressionError is thrown (property)", () => {
    const size = 4096
    const base = qemuDeflate(textBytes(size, 21))
    const [[, node], [, portable]] = codecs
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(base.length),
        (edits, cut) => {
          const input = base.slice(0, Math.max(cut, 1))
          for (const [i, v] of edits) if (i < input.length) input[i] = v
          const outcomes = [node, portable].map((codec) => {
            const out = new Uint8Array(size)
            try {
              codec.decompress(0, input, out)
              return { ok: true, out, reason: undefined }
            } catch (error) {
              expect(error).toBeInstanceOf(DecompressionError)
              return { ok: false, out: undefined, reason: (error as DecompressionError).reason }
            }
          })
          expect(outcomes[0].ok).toBe(outcomes[1].ok)
          expect(outcomes[0].reason).toBe(outcomes[1].reason)
          if (outcomes[0].out && outcomes[1].out) expectSameBytes(outcomes[0].out, outcomes[1].out)
        }
      ),
      { numRuns: 400 }
    )
  })

  it("a deflate bomb cannot make the decoder allocate more than the cluster", () => {
    const bomb = qemuDeflate(new Uint8Array(64 * 1024 * 1024))
    for (const [, codec] of codecs) {
      const out = new Uint8Array(512)
      codec.decompress(0, bomb, out)
      expect(out.every((b) => b === 0)).toBe(true)
    }
  })
})

describe("zstd interop and trailing data", () => {
  it("decodes frames of the @bokuweb/zstd-wasm package followed by zero padding or the next cluster", () => {
    for (const size of [512, 65536, 2 * 1024 * 1024]) {
      const data = textBytes(size, size + 3)
      const frame = packageCompress(data, 3)
      const next = packageCompress(textBytes(size, 1), 3)
      for (const input of [frame, padToSector(frame), concat(frame, next), concat(frame, randomBytes(900))]) {
        for (const [, codec] of codecs) {
          const out = new Uint8Array(size)
          codec.decompress(1, input, out)
          expectSameBytes(out, data)
        }
      }
    }
  })

  it("our frames decode with the @bokuweb/zstd-wasm package", () => {
    const data = textBytes(65536, 77)
    for (const [, codec] of codecs) {
      expectSameBytes(packageDecompress(codec.compress(1, data)!), data)
    }
  })

  it("decodes several frames and skippable frames until the cluster is full", () => {
    const size = 65536
    const data = textBytes(size, 4)
    const input = concat(
      buildSkippable(randomBytes(40)),
      packageCompress(data.subarray(0, 10000), 3),
      buildFrame({ blocks: [{ type: "raw", data: data.subarray(10000, 30000) }] }),
      buildSkippable(new Uint8Array(0), 15),
      packageCompress(data.subarray(30000), 5),
      packageCompress(textBytes(9000), 3),
      new Uint8Array(1000)
    )
    for (const [, codec] of codecs) {
      const out = new Uint8Array(size)
      codec.decompress(1, input, out)
      expectSameBytes(out, data)
    }
  })

  it("decodes hand-built raw and RLE frames (the walker and libzstd agree on the format)", () => {
    const size = 8192
    const expected = concat(new Uint8Array(3000).fill(7), textBytes(1192), new Uint8Array(4000).fill(0))
    const frame = buildFrame({
      contentSize: size,
      blocks: [
        { type: "rle", byte: 7, size: 3000 },
        { type: "raw", data: expected.subarray(3000, 4192) },
        { type: "rle", byte: 0, size: 4000 }
      ]
    })
    for (const [, codec] of codecs) {
      const out = new Uint8Array(size)
      codec.decompress(1, padToSector(frame), out)
      expectSameBytes(out, expected)
    }
  })

  it("output shorter than the cluster is ShortOutput: input exhausted, truncated frame, or padding after a short frame", () => {
    const frame = packageCompress(textBytes(3000), 3)
    for (const [, codec] of codecs) {
      expect(decodeError(codec, 1, frame, 4096).reason).toBe("ShortOutput")
      expect(decodeError(codec, 1, padToSector(frame), 4096).reason).toBe("ShortOutput")
      expect(decodeError(codec, 1, frame.subarray(0, frame.length - 3), 4096).reason).toBe("ShortOutput")
      expect(decodeError(codec, 1, new Uint8Array(0), 4096).reason).toBe("ShortOutput")
    }
  })

  it("data that is not zstd, a reserved block type, or a frame overflowing the cluster is Corrupt", () => {
    const size = 4096
    for (const [, codec] of codecs) {
      expect(decodeError(codec, 1, qemuDeflate(textBytes(size)), size).reason).toBe("Corrupt")
      expect(decodeError(codec, 1, new Uint8Array(512), size).reason).toBe("Corrupt")
      expect(decodeError(codec, 1, buildFrame({ blocks: [{ type: "reserved", size: 3 }] }), size).reason).toBe(
        "Corrupt"
      )
      // declared content size larger than the cluster: rejected before decoding
      const declared = buildFrame({ contentSize: 2 ** 40, blocks: [{ type: "rle", byte: 1, size: 100 }] })
      expect(decodeError(codec, 1, declared, size).message).toMatch(/only 4096 fit/)
      // no declared size, content larger than the cluster: libzstd stops at the cluster
      const undeclared = buildFrame({
        blocks: [
          { type: "rle", byte: 1, size: 4000 },
          { type: "rle", byte: 2, size: 4000 }
        ]
      })
      expect(decodeError(codec, 1, undeclared, size).reason).toBe("Corrupt")
      // a frame that fills the cluster but claims a different content size
      const lying = buildFrame({ contentSize: 100, blocks: [{ type: "rle", byte: 1, size: size }] })
      expect(decodeError(codec, 1, lying, size).reason).toBe("Corrupt")
    }
  })

  it("a frame that needs a dictionary is Unsupported", () => {
    const frame = buildFrame({ dictionaryId: 42, blocks: [{ type: "rle", byte: 1, size: 512 }] })
    for (const [, codec] of codecs) {
      expect(decodeError(codec, 1, frame, 512).reason).toBe("Unsupported")
    }
  })

  it("a wrong content checksum is Corrupt", () => {
    // hand-built frame with a checksum that cannot be right for the content
    const frame = buildFrame({ checksum: Uint8Array.of(0, 0, 0, 0), blocks: [{ type: "rle", byte: 5, size: 512 }] })
    for (const [, codec] of codecs) {
      const error = decodeError(codec, 1, frame, 512)
      expect(error.reason).toBe("Corrupt")
      expect(error.message).toMatch(/checksum/)
    }
  })

  it("mutated frames throw only DecompressionError (property)", () => {
    const size = 4096
    const base = padToSector(packageCompress(textBytes(size, 8), 3))
    const [[, codec]] = codecs
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(base.length),
        (edits, cut) => {
          const input = base.slice(0, cut)
          for (const [i, v] of edits) if (i < input.length) input[i] = v
          try {
            codec.decompress(1, input, new Uint8Array(size))
          } catch (error) {
            expect(error).toBeInstanceOf(DecompressionError)
          }
        }
      ),
      { numRuns: 400 }
    )
  })
})

describe("argument checks", () => {
  it("rejects unknown types, non-cluster sizes and bad levels with typed errors", () => {
    for (const [, codec] of codecs) {
      expect(decodeError(codec, 2 as CompressionType, new Uint8Array(10), 512).reason).toBe("Unsupported")
      for (const size of [0, 256, 1000, 4 * 1024 * 1024]) {
        expect(decodeError(codec, 0, new Uint8Array(10), size).reason).toBe("Unsupported")
      }
      for (const [type, input, level] of [
        [2, new Uint8Array(512), undefined],
        [0, new Uint8Array(1000), undefined],
        [0, new Uint8Array(512), 10],
        [0, new Uint8Array(512), -1],
        [1, new Uint8Array(512), 23],
        [1, new Uint8Array(512), 1.5]
      ] as const) {
        const error = thrown(() => codec.compress(type as CompressionType, input, { level }))
        expect(error).toBeInstanceOf(CompressionError)
        expect((error as CompressionError).reason).toBe("Unsupported")
      }
    }
  })
})

describe("Effect API and layers", () => {
  for (const [name, layer] of [
    ["NodeClusterCodec.layer", NodeClusterCodec.layer],
    ["PortableClusterCodec.layer", PortableClusterCodec.layer]
  ] as const) {
    it(`${name} provides ClusterCodec; failures are typed`, async () => {
      const data = textBytes(65536, 31)
      const program = Effect.gen(function* () {
        const codec = yield* ClusterCodec
        const compressed = yield* codec.compress(1, data, { level: 5 })
        const out = new Uint8Array(65536)
        yield* codec.decompress(1, compressed!, out)
        const failure = yield* Effect.flip(codec.decompress(0, Uint8Array.of(0x07), new Uint8Array(512)))
        const badLevel = yield* Effect.flip(codec.compress(0, data, { level: 99 }))
        return { out, failure, badLevel }
      })
      const { out, failure, badLevel } = await Effect.runPromise(Effect.provide(program, layer))
      expectSameBytes(out, data)
      expect(failure._tag).toBe("DecompressionError")
      expect(failure.reason).toBe("Corrupt")
      expect(badLevel._tag).toBe("CompressionError")
      const exit = await Effect.runPromiseExit(
        Effect.provide(
          Effect.gen(function* () {
            const codec = yield* ClusterCodec
            yield* codec.decompress(1, new Uint8Array(4), new Uint8Array(512))
          }),
          layer
        )
      )
      expect(Exit.isFailure(exit)).toBe(true)
    })
  }
})

describe("zstd wasm loaded by the first zstd cluster", () => {
  it("deflate never loads it; a failed load fails zstd clusters with typed errors; the next zstd cluster tries again", async () => {
    let loads = 0
    let available = false
    const codec = makeClusterCodec(portableDeflateKernels(), () => {
      loads++
      return available ? zstdKernel() : Promise.reject(new RangeError("WebAssembly.Instance(): Out of memory"))
    })
    const data = textBytes(65536, 41)
    const out = new Uint8Array(65536)
    const deflated = await Effect.runPromise(codec.compress(0, data))
    await Effect.runPromise(codec.decompress(0, deflated!, out))
    expectSameBytes(out, data)
    expect(loads).toBe(0)

    const zstdFrame = packageCompress(data, 3)
    const decodeFailure = await Effect.runPromise(Effect.flip(codec.decompress(1, zstdFrame, out)))
    expect(decodeFailure).toBeInstanceOf(DecompressionError)
    expect(decodeFailure.reason).toBe("Unsupported")
    expect(decodeFailure.message).toMatch(/zstd is not available: .*Out of memory/)
    const encodeFailure = await Effect.runPromise(Effect.flip(codec.compress(1, data)))
    expect(encodeFailure).toBeInstanceOf(CompressionError)
    expect(encodeFailure.reason).toBe("Failed")
    expect(loads).toBe(2)

    available = true
    out.fill(0)
    await Effect.runPromise(codec.decompress(1, zstdFrame, out))
    expectSameBytes(out, data)
    expectSameBytes(await Effect.runPromise(codec.compress(1, data)), zstdFrame)
    expect(loads).toBe(3)
  })
})
