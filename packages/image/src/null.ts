import { Effect } from "effect"
import type { BlockStatus, Image } from "./api.js"
import { ImageError } from "./errors.js"
import { checkRange } from "./internal/errors.js"

/** The name QEMU's null-co driver takes (`null-co://`, nothing after it) and shows for its node. */
export const NULL_CO_NAME = "null-co://"

/** What QEMU's null-co driver takes (block/null.c): its size and whether reads return zeros. */
export interface NullImageOptions {
  /** Virtual size in bytes (QEMU's default: 1 GiB); rounded up to whole sectors, as QEMU's block layer shows it. */
  readonly size: number
  /**
   * `read-zeroes`: reads fill the buffer with zeros and block status says
   * zero. Without it QEMU leaves the buffer as it was (undefined content)
   * and reports the range unallocated; here the buffer is zeroed either way,
   * so no stale bytes leak into what a caller copies.
   */
  readonly readZeroes: boolean
  readonly readOnly: boolean
  /**
   * The format the node is opened as: `null-co` itself (`-f null-co`,
   * `driver: null-co`), or `raw` over it (`null-co://` probed), which
   * passes every request through.
   */
  readonly format: "null-co" | "raw"
}

/** QEMU's default null-co size (BlockDriver null-co, "size" option default). */
export const NULL_CO_DEFAULT_SIZE = 1 << 30

/**
 * QEMU's null-co block driver (block/null.c): a device of a given size
 * whose writes are discarded and whose reads return zeros; for benchmarks
 * and tests (qemu-img convert from it makes an empty image). No resize, no
 * compressed writes, nothing to check.
 */
export const makeNullImage = (options: NullImageOptions): Image => {
  const location = NULL_CO_NAME
  const virtualSize = Math.ceil(options.size / 512) * 512
  const guard = (offset: number, length: number, write: boolean): ImageError | undefined =>
    write && options.readOnly ? new ImageError({ reason: "ReadOnly", message: "Block node is read-only", location }) : checkRange(location, virtualSize, offset, length)
  const request = (offset: number, length: number, write: boolean) => {
    const bad = guard(offset, length, write)
    return bad !== undefined ? Effect.fail(bad) : Effect.void
  }
  const unsupported = (message: string) => Effect.fail(new ImageError({ reason: "Unsupported", message, location, errno: "ENOTSUP" }))
  const status = (offset: number, length: number): BlockStatus =>
    options.readZeroes
      ? { offset, length, depth: 0, present: true, zero: true, data: false, compressed: false, hostOffset: offset, file: location }
      : { offset, length, depth: 0, present: false, zero: false, data: false, compressed: false }
  return {
    format: options.format,
    location,
    readOnly: options.readOnly,
    virtualSize,
    clusterSize: 512,
    header: undefined,
    snapshots: [],
    internalSnapshots: undefined,
    backing: undefined,
    backingFileName: undefined,
    backingFileResolved: undefined,
    dataFile: undefined,
    read: (offset, into) => Effect.map(request(offset, into.length, false), () => void into.fill(0)),
    write: (offset, data) => request(offset, data.length, true),
    writeZeroes: (offset, length) => request(offset, length, true),
    discard: (offset, length) => request(offset, length, true),
    writeCompressed: () => unsupported("null-co cannot hold compressed data"),
    flush: () => Effect.void,
    truncate: () => unsupported("Image format driver does not support resize"),
    blockStatus: (offset, length) => Effect.map(request(offset, length, false), () => status(offset, Math.min(length, virtualSize - offset))),
    formatSpecific: () => Effect.succeed({}),
    check: () => unsupported("This image format does not support checks"),
    makeEmpty: () => unsupported("null-co cannot be emptied"),
    setBacking: () => unsupported("null-co has no backing file")
  }
}
