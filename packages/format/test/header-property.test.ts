import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  FormatError,
  HeaderExtensionType,
  IncompatibleFeature,
  decodeImageHeader,
  encodeHeader,
  encodeHeaderExtensions,
  decodeHeader,
  encodeImageHeader,
  type FeatureName,
  type Header,
  type HeaderExtensions,
  type ImageHeader
} from "../src/index.js"

const KNOWN_TYPES = new Set<number>(Object.values(HeaderExtensionType))
const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
const name = (maxLength: number) => fc.string({ unit: "grapheme", maxLength })
const featureName: fc.Arbitrary<FeatureName> = fc.record({
  type: fc.constantFrom(0 as const, 1 as const, 2 as const),
  bit: fc.nat({ max: 63 }),
  name: fc.string({ unit: "grapheme-ascii", maxLength: 46 }).filter((s) => !s.includes("\0"))
})

/** Arbitrary self-consistent image headers (everything decodeImageHeader accepts). */
const imageHeader: fc.Arbitrary<ImageHeader> = fc
  .record({
    version: fc.constantFrom(2 as const, 3 as const),
    clusterBits: fc.integer({ min: 9, max: 21 }),
    extendedL2: fc.boolean(),
    sizeFraction: fc.double({ min: 0, max: 1, noNaN: true }),
    extraL1: fc.nat({ max: 100 }),
    l1Cluster: fc.nat({ max: 2 ** 32 - 1 }),
    refcountCluster: fc.nat({ max: 2 ** 32 - 1 }),
    snapshotsCluster: fc.nat({ max: 2 ** 32 - 1 }),
    refcountTableClusters: fc.nat({ max: 16 }),
    nbSnapshots: fc.nat({ max: 65536 }),
    luks: fc.boolean(),
    aes: fc.boolean(),
    zstd: fc.boolean(),
    dataFile: fc.boolean(),
    dataFileName: fc.option(name(50), { nil: undefined }),
    rawData: fc.boolean(),
    otherIncompatible: u64.map((b) => b & ~31n),
    compatibleFeatures: u64,
    autoclear: u64.map((b) => b & ~2n),
    refcountOrder: fc.nat({ max: 6 }),
    headerExtra: fc.constantFrom(-8, 0, 0, 8, 16, 64),
    unknownHeaderBytes: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    backingFormat: fc.option(name(20), { nil: undefined }),
    backingFile: fc.option(name(80), { nil: undefined }),
    featureNames: fc.array(featureName, { maxLength: 10 }),
    bitmaps: fc.option(
      fc.record({
        nbBitmaps: fc.integer({ min: 1, max: 65535 }),
        directorySize: fc.nat({ max: 2 ** 30 }),
        directoryOffset: fc.nat({ max: 2 ** 40 }).map((n) => n * 512)
      }),
      { nil: undefined }
    ),
    fde: fc.record({ offset: fc.nat({ max: 2 ** 40 }).map((n) => n * 512), length: fc.nat({ max: 2 ** 20 }) }),
    unknown: fc.array(
      fc.record({ type: fc.integer({ min: 1, max: 0xffffffff }).filter((t) => !KNOWN_TYPES.has(t)), data: fc.uint8Array({ maxLength: 40 }) }),
      { maxLength: 3 }
    )
  })
  .map((r): ImageHeader => {
    const v3 = r.version === 3
    const extendedL2 = v3 && r.extendedL2 && r.clusterBits >= 14
    const l2Bits = r.clusterBits - (extendedL2 ? 4 : 3)
    const maxSize = Math.min(Number.MAX_SAFE_INTEGER, 2 ** 22 * 2 ** (r.clusterBits + l2Bits))
    const size = Math.floor(r.sizeFraction * maxSize)
    const needed = Math.ceil(size / 2 ** (r.clusterBits + l2Bits))
    const cs = 2 ** r.clusterBits
    const clusterOffset = (n: number) => (n % 2 ** (53 - r.clusterBits)) * cs
    const headerLength = v3 ? 112 + r.headerExtra : 72
    const compressionType = v3 && headerLength > 104 && r.zstd ? 1 : 0
    const dataFile = v3 && r.dataFile
    const incompatibleFeatures = v3
      ? r.otherIncompatible |
        (extendedL2 ? IncompatibleFeature.ExtendedL2 : 0n) |
        (compressionType !== 0 ? IncompatibleFeature.CompressionType : 0n) |
        (dataFile ? IncompatibleFeature.ExternalDataFile : 0n)
      : 0n
    const cryptMethod = r.luks ? 2 : r.aes ? 1 : 0
    const header: Header = {
      version: r.version,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: r.clusterBits,
      size,
      cryptMethod,
      l1Size: Math.min(needed + r.extraL1, 2 ** 22),
      l1TableOffset: clusterOffset(r.l1Cluster),
      refcountTableOffset: clusterOffset(r.refcountCluster),
      refcountTableClusters: Math.min(r.refcountTableClusters, (8 * 1024 * 1024) / cs),
      nbSnapshots: r.nbSnapshots,
      snapshotsOffset: clusterOffset(r.snapshotsCluster),
      incompatibleFeatures,
      compatibleFeatures: v3 ? r.compatibleFeatures : 0n,
      autoclearFeatures: v3 ? r.autoclear | (dataFile && r.rawData ? 2n : 0n) : 0n,
      refcountOrder: v3 ? r.refcountOrder : 4,
      headerLength,
      compressionType,
      unknownHeaderFields: r.unknownHeaderBytes.slice(0, Math.max(0, headerLength - 112))
    }
    const extensions: HeaderExtensions = {
      featureNames: r.featureNames,
      unknown: r.unknown,
      ...(r.backingFormat !== undefined ? { backingFormat: r.backingFormat } : {}),
      ...(r.bitmaps !== undefined ? { bitmaps: r.bitmaps } : {}),
      ...(cryptMethod === 2 ? { fullDiskEncryption: r.fde } : {}),
      ...(dataFile && r.dataFileName !== undefined ? { externalDataFile: r.dataFileName } : {})
    }
    return { header, extensions, ...(r.backingFile !== undefined ? { backingFile: r.backingFile } : {}) }
  })

describe("header round-trip (property)", () => {
  it("decodeImageHeader(encodeImageHeader(x)) == x, or DoesNotFit when it exceeds the cluster", () => {
    let fitted = 0
    fc.assert(
      fc.property(imageHeader, (image) => {
        const clusterSize = 2 ** image.header.clusterBits
        let bytes: Uint8Array
        try {
          bytes = encodeImageHeader(image)
        } catch (e) {
          expect(e).toBeInstanceOf(FormatError)
          expect((e as FormatError).reason).toBe("DoesNotFit")
          const nameLength = image.backingFile !== undefined ? new TextEncoder().encode(image.backingFile).length : 0
          expect(image.header.headerLength + encodeHeaderExtensions(image.extensions).length + nameLength).toBeGreaterThan(clusterSize)
          return
        }
        fitted++
        const cluster = new Uint8Array(clusterSize)
        cluster.fill(0xee) // whatever follows the header in cluster 0 must not matter
        cluster.set(bytes)
        const back = decodeImageHeader(cluster)
        const nameLength = image.backingFile !== undefined ? new TextEncoder().encode(image.backingFile).length : 0
        expect(back).toEqual({
          ...image,
          header: {
            ...image.header,
            backingFileOffset: image.backingFile !== undefined ? bytes.length - nameLength : 0,
            backingFileSize: nameLength
          }
        })
        // the fixed part alone round-trips through encodeHeader/decodeHeader
        expect(decodeHeader(encodeHeader(back.header))).toEqual(back.header)
      }),
      { numRuns: 500 }
    )
    expect(fitted).toBeGreaterThan(250)
  })
})
