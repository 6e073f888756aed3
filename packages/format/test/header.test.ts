import { afterAll, describe, expect, it } from "vitest"
import {
  AutoclearFeature,
  CompatibleFeature,
  CompressionType,
  CryptMethod,
  FormatError,
  HeaderExtensionType,
  IncompatibleFeature,
  decodeHeader,
  decodeImageHeader,
  defaultFeatureNames,
  featureNamesFor,
  encodeHeader,
  encodeImageHeader,
  l1EntriesFor,
  makeGeometry,
  type Header,
  type ImageHeader
} from "../src/index.js"
import { qemuImg, qemuInfo, readBytes, scratch } from "./qemu.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

const create = (name: string, size: string, ...opts: string[]): { image: ImageHeader; raw: Uint8Array; info: any } => {
  qemuImg(tmp.dir, "create", "-q", "-f", "qcow2", ...opts, name, size)
  const raw = readBytes(tmp.path(name), 0, 2 * 1024 * 1024)
  return { image: decodeImageHeader(raw), raw, info: qemuInfo(tmp.dir, name) }
}

/** Encoding QEMU's own header must give back exactly QEMU's bytes (everything before zero fill). */
const expectReencodesExactly = (image: ImageHeader, raw: Uint8Array): void => {
  const encoded = encodeImageHeader(image)
  expect(Buffer.from(encoded).toString("hex")).toBe(Buffer.from(raw.subarray(0, encoded.length)).toString("hex"))
  const clusterSize = 2 ** image.header.clusterBits
  expect(raw.subarray(encoded.length, clusterSize).every((b) => b === 0)).toBe(true)
}

const fail = (f: () => unknown): FormatError => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError)
    return e as FormatError
  }
  throw new Error("expected a FormatError")
}

describe("headers written by qemu-img create", () => {
  it("v3 defaults", () => {
    const { image, raw, info } = create("v3.qcow2", "1G")
    const h = image.header
    expect(h.version).toBe(3)
    expect(h.clusterBits).toBe(16)
    expect(h.size).toBe(info["virtual-size"])
    expect(h.headerLength).toBe(112)
    expect(h.refcountOrder).toBe(4)
    expect(h.refcountTableOffset).toBe(0x10000)
    expect(h.l1TableOffset).toBe(0x30000)
    expect(h.l1Size).toBe(l1EntriesFor(h.size, makeGeometry(16, false, 4)))
    expect(h.incompatibleFeatures).toBe(0n)
    expect(h.unknownHeaderFields.length).toBe(0)
    expect(image.extensions.featureNames).toEqual(defaultFeatureNames)
    expect(featureNamesFor(3, 16)).toBe(defaultFeatureNames)
    expect(image.backingFile).toBeUndefined()
    expectReencodesExactly(image, raw)
  })

  it("v2 (compat=0.10)", () => {
    const { image, raw, info } = create("v2.qcow2", "100M", "-o", "compat=0.10")
    expect(info["format-specific"].data.compat).toBe("0.10")
    expect(image.header.version).toBe(2)
    expect(image.header.headerLength).toBe(72)
    expect(image.header.refcountOrder).toBe(4)
    expect(image.extensions.featureNames).toEqual([])
    expectReencodesExactly(image, raw)
  })

  it("zstd compression type", () => {
    const { image, raw, info } = create("zstd.qcow2", "64M", "-o", "compression_type=zstd")
    expect(info["format-specific"].data["compression-type"]).toBe("zstd")
    expect(image.header.compressionType).toBe(CompressionType.Zstd)
    expect(image.header.incompatibleFeatures).toBe(IncompatibleFeature.CompressionType)
    expectReencodesExactly(image, raw)
  })

  it("extended L2", () => {
    const { image, raw, info } = create("ext.qcow2", "10G", "-o", "extended_l2=on,cluster_size=128k")
    expect(info["format-specific"].data["extended-l2"]).toBe(true)
    expect(image.header.incompatibleFeatures).toBe(IncompatibleFeature.ExtendedL2)
    expect(image.header.clusterBits).toBe(17)
    expect(image.header.l1Size).toBe(l1EntriesFor(image.header.size, makeGeometry(17, true, 4)))
    expectReencodesExactly(image, raw)
  })

  it("lazy refcounts", () => {
    const { image, raw, info } = create("lazy.qcow2", "1M", "-o", "lazy_refcounts=on")
    expect(info["format-specific"].data["lazy-refcounts"]).toBe(true)
    expect(image.header.compatibleFeatures).toBe(CompatibleFeature.LazyRefcounts)
    expectReencodesExactly(image, raw)
  })

  it("external data file, raw", () => {
    const { image, raw, info } = create("df.qcow2", "1M", "-o", "data_file=df.raw,data_file_raw=on")
    expect(info["format-specific"].data["data-file"]).toBe("df.raw")
    expect(image.extensions.externalDataFile).toBe("df.raw")
    expect(image.header.incompatibleFeatures).toBe(IncompatibleFeature.ExternalDataFile)
    expect(image.header.autoclearFeatures).toBe(AutoclearFeature.RawExternalData)
    expectReencodesExactly(image, raw)
  })

  it("backing file with -F", () => {
    create("base.qcow2", "1M")
    const { image, raw, info } = create("top.qcow2", "1M", "-b", "base.qcow2", "-F", "qcow2")
    expect(info["backing-filename"]).toBe("base.qcow2")
    expect(image.backingFile).toBe("base.qcow2")
    expect(image.extensions.backingFormat).toBe("qcow2")
    expect(image.header.backingFileSize).toBe("base.qcow2".length)
    expectReencodesExactly(image, raw)
  })

  it("refcount widths 1 and 64 bits, cluster sizes 512 and 2M", () => {
    for (const [opts, order, bits] of [
      ["refcount_bits=1", 0, 16],
      ["refcount_bits=64", 6, 16],
      ["cluster_size=512", 4, 9],
      ["cluster_size=2M", 4, 21]
    ] as const) {
      const { image, raw, info } = create(`rc-${order}-${bits}.qcow2`, "3G", "-o", opts)
      expect(image.header.refcountOrder).toBe(order)
      expect(image.extensions.featureNames).toEqual(featureNamesFor(3, bits))
      expect(info["format-specific"].data["refcount-bits"]).toBe(1 << order)
      expect(image.header.clusterBits).toBe(bits)
      expect(image.header.l1Size).toBe(l1EntriesFor(image.header.size, makeGeometry(bits, false, order)))
      expectReencodesExactly(image, raw)
    }
  })

  it("LUKS: full disk encryption extension", () => {
    const { image, raw } = create(
      "luks.qcow2",
      "1M",
      "--object",
      "secret,id=sec0,data=abc",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    )
    expect(image.header.cryptMethod).toBe(CryptMethod.Luks)
    const fde = image.extensions.fullDiskEncryption!
    expect(fde.offset % 65536).toBe(0)
    expect(fde.length).toBeGreaterThan(592)
    // the LUKS header magic "LUKS\xba\xbe" lives at the extension's offset
    const luks = readBytes(tmp.path("luks.qcow2"), fde.offset, 6)
    expect(Array.from(luks)).toEqual([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])
    expectReencodesExactly(image, raw)
  })

  it("bitmaps extension after qemu-img bitmap --add", () => {
    create("bm.qcow2", "1G")
    qemuImg(tmp.dir, "bitmap", "--add", "bm.qcow2", "b0")
    const raw = readBytes(tmp.path("bm.qcow2"), 0, 65536)
    const image = decodeImageHeader(raw)
    expect(image.header.autoclearFeatures & AutoclearFeature.Bitmaps).toBe(AutoclearFeature.Bitmaps)
    expect(image.extensions.bitmaps?.nbBitmaps).toBe(1)
    expect(image.extensions.bitmaps!.directoryOffset % 65536).toBe(0)
    expectReencodesExactly(image, raw)
  })

  it("decodeHeader peeks the fixed header from a short buffer", () => {
    const raw = readBytes(tmp.path("v3.qcow2"), 0, 112)
    expect(decodeHeader(raw).clusterBits).toBe(16)
    expect(fail(() => decodeImageHeader(raw)).reason).toBe("Truncated")
  })
})

/** A valid v3 image header built by hand, patched by each hostile case. */
const baseImage = (): Uint8Array => {
  const header: Header = {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 16,
    size: 1 << 30,
    cryptMethod: 0,
    l1Size: 2,
    l1TableOffset: 0x30000,
    refcountTableOffset: 0x10000,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 112,
    compressionType: 0,
    unknownHeaderFields: new Uint8Array(0)
  }
  const out = new Uint8Array(65536)
  out.set(encodeImageHeader({ header, extensions: { featureNames: defaultFeatureNames, unknown: [] } }))
  return out
}
const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength)
const patch = (f: (v: DataView, b: Uint8Array) => void): Uint8Array => {
  const b = baseImage()
  f(dv(b), b)
  return b
}
const reason = (b: Uint8Array) => fail(() => decodeImageHeader(b))

describe("hostile headers", () => {
  it("base image decodes", () => {
    expect(decodeImageHeader(baseImage()).header.size).toBe(1 << 30)
  })
  it("bad magic", () => {
    expect(reason(patch((v) => v.setUint32(0, 0x514649fa))).reason).toBe("BadMagic")
    expect(reason(new Uint8Array(3)).reason).toBe("Truncated")
  })
  it("unsupported versions", () => {
    for (const ver of [0, 1, 4, 0xffffffff]) expect(reason(patch((v) => v.setUint32(4, ver))).reason).toBe("UnsupportedVersion")
  })
  it("cluster_bits out of range", () => {
    for (const cb of [0, 8, 22, 63]) expect(reason(patch((v) => v.setUint32(20, cb))).field).toBe("cluster_bits")
  })
  it("header_length: too small, unaligned, huge", () => {
    for (const hl of [0, 72, 100, 105, 116, 65544, 0xfffffff8]) {
      const e = reason(patch((v) => v.setUint32(100, hl)))
      expect(e.reason).toBe("InvalidField")
      expect(e.field).toBe("header_length")
    }
  })
  it("header_length larger than the buffer is Truncated", () => {
    const b = patch((v) => v.setUint32(100, 4096)).subarray(0, 2048)
    expect(reason(b).reason).toBe("Truncated")
  })
  it("unknown header fields are preserved", () => {
    const b = patch((v, b) => {
      v.setUint32(100, 128)
      b.fill(0, 112, 65536)
      b.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], 112)
    })
    const image = decodeImageHeader(b)
    expect(Array.from(image.header.unknownHeaderFields)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    const again = decodeImageHeader(encodeImageHeader(image))
    expect(again).toEqual(image)
  })
  it("extension length overflowing the cluster", () => {
    const e = reason(patch((v) => v.setUint32(116, 65536 - 120 + 1)))
    expect(e.reason).toBe("InvalidField")
    expect(e.offset).toBe(112)
    expect(reason(patch((v) => v.setUint32(116, 0xffffffff))).reason).toBe("InvalidField")
  })
  it("end marker whose length runs past the extension area (QEMU: Header extension too large)", () => {
    // feature name table at 112 (8 + 8 * 48 bytes), then the end marker at 504
    expect(decodeImageHeader(patch((v) => v.setUint32(508, 65536 - 512))).header.size).toBe(1 << 30)
    const e = reason(patch((v) => v.setUint32(508, 65536 - 512 + 1)))
    expect(e.reason).toBe("InvalidField")
    expect(e.offset).toBe(504)
    expect(reason(patch((v) => v.setUint32(508, 0x20000))).reason).toBe("InvalidField")
  })
  it("names end at the first NUL byte, as QEMU reads them (C strings)", () => {
    const image = decodeImageHeader(baseImage())
    const b = new Uint8Array(65536)
    b.set(encodeImageHeader({ ...image, backingFile: "back.raw", extensions: { ...image.extensions, backingFormat: "raw" } }))
    const at = Number(new DataView(b.buffer).getBigUint64(8))
    expect(decodeImageHeader(b).backingFile).toBe("back.raw")
    b[at + 4] = 0
    expect(decodeImageHeader(b).backingFile).toBe("back")
    b[at] = 0
    expect(decodeImageHeader(b).backingFile).toBe("")
    // the backing format extension's data ("raw") starts 8 bytes after the first extension header at 112
    b[121] = 0
    expect(decodeImageHeader(b).extensions.backingFormat).toBe("r")
  })
  it("extension header crossing the end of the extension area", () => {
    // backing name at 996 ends the extension area; the next extension header would start at 992
    const b = patch((v, b) => {
      b.fill(0, 112)
      v.setUint32(12, 996)
      v.setUint32(16, 4)
      v.setUint32(112, 0x12345678)
      v.setUint32(116, 992 - 120)
      v.setUint32(992, 0x12345679)
    })
    expect(reason(b).reason).toBe("InvalidField")
    // an extension that ends exactly at the backing name, with no end marker, is fine
    const ok = b.slice()
    dv(ok).setUint32(116, 996 - 120)
    dv(ok).setUint32(996, 0x61626364)
    expect(decodeImageHeader(ok).backingFile).toBe("abcd")
  })
  it("extensions cut short by the buffer are Truncated", () => {
    expect(reason(baseImage().subarray(0, 200)).reason).toBe("Truncated")
  })
  it("extension area without an end marker is accepted up to the cluster end", () => {
    const b = patch((v, b) => {
      b.fill(0, 112)
      v.setUint32(112, 0x12345678)
      v.setUint32(116, 65536 - 112 - 8)
      b.fill(0xaa, 120)
    })
    const image = decodeImageHeader(b)
    expect(image.extensions.unknown).toHaveLength(1)
    expect(image.extensions.unknown[0]!.data.length).toBe(65536 - 120)
  })
  it("duplicate known extensions: the later one counts, as in QEMU (iotest 114)", () => {
    const image = decodeImageHeader(baseImage())
    const withDup = encodeImageHeader({ ...image, extensions: { ...image.extensions, backingFormat: "raw" } })
    const b = new Uint8Array(65536)
    b.set(withDup)
    // a second backing format extension ("foo") in place of the feature table
    dv(b).setUint32(128, HeaderExtensionType.BackingFormat)
    dv(b).setUint32(132, 3)
    b.set(new TextEncoder().encode("foo"), 136)
    expect(decodeImageHeader(b).extensions.backingFormat).toBe("foo")
  })
  it("backing file name outside cluster 0, too long, or past the buffer", () => {
    expect(reason(patch((v) => { v.setUint32(12, 65530); v.setUint32(16, 10) })).field).toBe("backing_file_offset")
    expect(reason(patch((v) => { v.setUint32(8, 1); v.setUint32(12, 0); v.setUint32(16, 4) })).reason).toBe("InvalidField")
    expect(reason(patch((v) => { v.setUint32(12, 1024); v.setUint32(16, 1024) })).field).toBe("backing_file_size")
    const short = patch((v) => { v.setUint32(12, 4096); v.setUint32(16, 100) }).subarray(0, 4100)
    expect(reason(short).reason).toBe("Truncated")
  })
  it("refcount_order 7", () => {
    expect(reason(patch((v) => v.setUint32(96, 7))).field).toBe("refcount_order")
  })
  it("crypt_method 3", () => {
    expect(reason(patch((v) => v.setUint32(32, 3))).field).toBe("crypt_method")
  })
  it("size >= 2^53 is OffsetTooLarge", () => {
    expect(reason(patch((v) => v.setUint32(24, 0x200000))).reason).toBe("OffsetTooLarge")
    expect(reason(patch((v) => v.setUint32(40, 0xffffffff))).reason).toBe("OffsetTooLarge")
  })
  it("L1 too small for the size, too large, or unaligned tables", () => {
    expect(reason(patch((v) => v.setUint32(36, 1))).field).toBe("l1_size")
    expect(reason(patch((v) => v.setUint32(36, 4 * 1024 * 1024 + 1))).field).toBe("l1_size")
    expect(reason(patch((v) => v.setUint32(44, 0x30200))).field).toBe("l1_table_offset")
    expect(reason(patch((v) => v.setUint32(52, 0x10200))).field).toBe("refcount_table_offset")
    expect(reason(patch((v) => v.setUint32(68, 0x200))).field).toBe("snapshots_offset")
    expect(reason(patch((v) => v.setUint32(56, 129))).field).toBe("refcount_table_clusters")
    expect(reason(patch((v) => v.setUint32(60, 65537))).field).toBe("nb_snapshots")
  })
  it("feature bit consistency", () => {
    expect(reason(patch((v) => { v.setUint32(20, 13); v.setUint32(36, 1024); v.setUint32(76, 16) })).field).toBe("cluster_bits")
    expect(reason(patch((_v, b) => { b[104] = 1 })).field).toBe("compression_type")
    expect(reason(patch((v) => v.setUint32(76, 8))).field).toBe("incompatible_features")
    expect(reason(patch((v) => v.setUint32(92, 2))).field).toBe("autoclear_features")
    expect(() => decodeImageHeader(patch((v, b) => { v.setUint32(76, 8); b[104] = 1 }))).not.toThrow()
  })
  it("FDE extension iff LUKS; data file extension needs the incompatible bit", () => {
    expect(reason(patch((v) => v.setUint32(32, 2))).field).toBe("crypt_method")
    const image = decodeImageHeader(baseImage())
    const withFde = encodeImageHeader({ ...image, extensions: { ...image.extensions, fullDiskEncryption: { offset: 0x50000, length: 4096 } } })
    expect(fail(() => decodeImageHeader(withFde)).field).toBe("crypt_method")
    const withData = encodeImageHeader({ ...image, extensions: { ...image.extensions, externalDataFile: "x.raw" } })
    expect(fail(() => decodeImageHeader(withData)).field).toBe("incompatible_features")
  })
  it("bitmaps extension: wrong length, zero bitmaps, reserved bits", () => {
    const image = decodeImageHeader(baseImage())
    const ok = encodeImageHeader({ ...image, extensions: { ...image.extensions, bitmaps: { nbBitmaps: 1, directorySize: 32, directoryOffset: 0x50000 } } })
    expect(decodeImageHeader(ok).extensions.bitmaps?.directorySize).toBe(32)
    const at = 112 + 8 + defaultFeatureNames.length * 48 // after the feature name table
    expect(dv(ok).getUint32(at)).toBe(HeaderExtensionType.Bitmaps)
    const zero = ok.slice(); dv(zero).setUint32(at + 8, 0)
    expect(fail(() => decodeImageHeader(zero)).field).toBe("nb_bitmaps")
    const reserved = ok.slice(); dv(reserved).setUint32(at + 12, 1)
    expect(fail(() => decodeImageHeader(reserved)).reason).toBe("InvalidField")
    const len = ok.slice(); dv(len).setUint32(at + 4, 16)
    expect(fail(() => decodeImageHeader(len)).reason).toBe("InvalidField")
  })
})

describe("encoding", () => {
  const h = (): Header => decodeImageHeader(baseImage()).header
  it("v2 with refcount_order != 4 or feature bits is rejected", () => {
    expect(fail(() => encodeHeader({ ...h(), version: 2, headerLength: 72, refcountOrder: 5 })).field).toBe("refcount_order")
    expect(fail(() => encodeHeader({ ...h(), version: 2, headerLength: 72, compatibleFeatures: 1n })).reason).toBe("InvalidField")
    expect(fail(() => encodeHeader({ ...h(), version: 2, headerLength: 112 })).field).toBe("header_length")
  })
  it("v2 headers carry extensions after byte 72", () => {
    const image: ImageHeader = {
      header: { ...h(), version: 2, headerLength: 72 },
      extensions: { featureNames: [], backingFormat: "raw", unknown: [] },
      backingFile: "b.img"
    }
    const bytes = encodeImageHeader(image)
    expect(dv(bytes).getUint32(72)).toBe(HeaderExtensionType.BackingFormat)
    const back = decodeImageHeader(bytes)
    expect(back.backingFile).toBe("b.img")
    expect(back.extensions.backingFormat).toBe("raw")
  })
  it("DoesNotFit when extensions overflow a 512-byte cluster", () => {
    const image: ImageHeader = {
      header: { ...h(), clusterBits: 9, l1Size: 4 * 1024 * 1024, l1TableOffset: 0x600, refcountTableOffset: 0x200, size: 1 << 30 },
      extensions: { featureNames: defaultFeatureNames, unknown: [] }
    }
    expect(encodeImageHeader(image).length).toBe(512)
    expect(fail(() => encodeImageHeader({ ...image, backingFile: "b" })).reason).toBe("DoesNotFit")
    expect(fail(() => encodeImageHeader({ ...image, extensions: { ...image.extensions, backingFormat: "raw" } })).reason).toBe("DoesNotFit")
  })
  it("encodeHeader writes header_length bytes", () => {
    expect(encodeHeader(h()).length).toBe(112)
    expect(encodeHeader({ ...h(), headerLength: 104 }).length).toBe(104)
    expect(fail(() => encodeHeader({ ...h(), headerLength: 104, compressionType: 1 })).field).toBe("compression_type")
  })
})
