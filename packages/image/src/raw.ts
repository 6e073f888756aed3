import { Effect } from "effect"
import { holeStatus } from "@qcow2/cluster"
import type { BlockStorageShape, StorageError } from "@qcow2/storage"
import type { BlockStatus, Image } from "./api.js"
import { ImageError } from "./errors.js"
import { firstBlockLength } from "./create.js"
import { asImageError, checkRange } from "./internal/errors.js"
import { PROBE_BYTES, probedFormat } from "./probe.js"

/**
 * A raw image: guest offset == file offset. Used as a backing file or data
 * source and for `-f raw`. Block status reports holes as zeros and the
 * rest as data where the storage can tell them apart (SEEK_DATA/SEEK_HOLE,
 * as QEMU's file driver does); elsewhere all-zero 4 KiB blocks are zero
 * (content is the portable approximation).
 */
export function makeRawImage(storage: BlockStorageShape, readOnly: boolean, probed = false): Effect.Effect<Image, ImageError> {
  const location = storage.location
  return asImageError(
    Effect.map(storage.size(), (initialSize) => {
      // The file's length in bytes; the disk is that rounded up to whole
      // sectors, and the tail past the file end reads as zeros (QEMU's raw
      // driver over a file of odd length).
      let fileSize = initialSize
      const sectors = () => Math.ceil(fileSize / 512) * 512
      const guard = (offset: number, length: number) => checkRange(location, sectors(), offset, length)
      const readClamped = (offset: number, into: Uint8Array): Effect.Effect<void, StorageError> => {
        const inFile = Math.max(0, Math.min(into.length, fileSize - offset))
        if (inFile < into.length) into.fill(0, inFile)
        return inFile > 0 ? storage.read(offset, into.subarray(0, inFile)) : Effect.void
      }
      const grown = (end: number) => {
        if (end > fileSize) fileSize = end
      }
      /**
       * QEMU's raw driver over a probed format: a write that would make the
       * first 512 bytes probe as another format (a qcow2 header naming a
       * backing file anywhere on the host, say) is refused with EPERM.
       */
      const refuseFormatChange = (offset: number, data: Uint8Array): Effect.Effect<void, ImageError> =>
        asImageError(
          Effect.gen(function* () {
            const first = new Uint8Array(PROBE_BYTES)
            yield* readClamped(0, first)
            first.set(data.subarray(0, PROBE_BYTES - offset), offset)
            if (probedFormat(first) === "raw") return
            return yield* new ImageError({ reason: "InvalidArgument", message: "write would change the probed format of block 0", location, errno: "EPERM" })
          }),
          location
        )
      const requireWritable = (): ImageError | undefined =>
        readOnly ? new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only`, location }) : undefined
      const image: Image = {
        format: "raw",
        location,
        readOnly,
        get virtualSize() {
          return sectors()
        },
        clusterSize: 512,
        header: undefined,
        snapshots: [],
        internalSnapshots: undefined,
        backing: undefined,
        backingFileName: undefined,
        backingFileResolved: undefined,
        dataFile: undefined,
        read: (offset, into) => {
          const bad = guard(offset, into.length)
          return bad ? Effect.fail(bad) : asImageError(readClamped(offset, into), location)
        },
        write: (offset, data) => {
          const bad = requireWritable() ?? guard(offset, data.length)
          if (bad) return Effect.fail(bad)
          const written = asImageError(Effect.map(storage.write(offset, data), () => grown(offset + data.length)), location)
          return probed && offset < PROBE_BYTES && data.length > 0 ? Effect.andThen(refuseFormatChange(offset, data), written) : written
        },
        writeZeroes: (offset, length, options) => {
          const bad = requireWritable() ?? guard(offset, length)
          if (bad) return Effect.fail(bad)
          // A store that zeroes without data on the wire (NBD_CMD_WRITE_ZEROES) is asked to.
          if (storage.writeZeroes !== undefined) {
            return asImageError(Effect.map(storage.writeZeroes(offset, length, options?.unmap ?? false), () => grown(offset + length)), location)
          }
          return asImageError(
            Effect.gen(function* () {
              const chunk = new Uint8Array(Math.min(length, 1 << 20))
              for (let done = 0; done < length; done += chunk.length) {
                yield* storage.write(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)))
              }
              grown(offset + length)
            }),
            location
          )
        },
        // QEMU's file driver punches a hole, which reads back as zeros; where
        // the store cannot punch holes, zeros are written instead.
        discard: (offset, length) => {
          const bad = requireWritable() ?? guard(offset, length)
          if (bad) return Effect.fail(bad)
          return storage.capabilities.discard ? asImageError(storage.discard(offset, length), location) : image.writeZeroes(offset, length)
        },
        writeCompressed: () =>
          Effect.fail(new ImageError({ reason: "Unsupported", message: "raw images cannot hold compressed data", location })),
        // QEMU's bdrv_co_flush raises these on the node below a format node before it flushes.
        flush: () =>
          asImageError(
            Effect.suspend(() => {
              storage.debugEvent?.("flush_to_os")
              storage.debugEvent?.("flush_to_disk")
              return storage.flush()
            }),
            location
          ),
        // The file takes the new length exactly (QEMU's file driver); a
        // grown area is written with zeros for falloc and full, so that it
        // is not sparse.
        truncate: (newSize, options) => {
          const bad = requireWritable()
          if (bad) return Effect.fail(bad)
          if (newSize < sectors() && !options?.shrink) {
            return Effect.fail(
              new ImageError({ reason: "InvalidArgument", message: "Use the --shrink option to perform a shrink operation.", location })
            )
          }
          const mode = options?.preallocation ?? "off"
          if (mode === "metadata") {
            return Effect.fail(new ImageError({ reason: "Unsupported", message: "Unsupported preallocation mode: metadata", location }))
          }
          return asImageError(
            Effect.gen(function* () {
              const from = fileSize
              yield* storage.resize(newSize)
              fileSize = newSize
              if (newSize <= from) return
              // Growing an empty file without preallocation allocates its first block, as QEMU's file driver does.
              if (mode === "off") {
                if (from === 0) yield* storage.write(0, new Uint8Array(firstBlockLength(newSize)))
                return
              }
              const chunk = new Uint8Array(Math.min(newSize - from, 1 << 20))
              for (let p = from; p < newSize; p += chunk.length) yield* storage.write(p, chunk.subarray(0, Math.min(chunk.length, newSize - p)))
            }),
            location
          )
        },
        blockStatus: (offset, length) => {
          const bad = guard(offset, length)
          if (bad) return Effect.fail(bad)
          if (offset >= fileSize) return Effect.succeed(tailStatus(storage, offset, Math.min(length, sectors() - offset)))
          return asImageError(rawBlockStatus(storage, offset, Math.min(length, fileSize - offset)), location)
        },
        formatSpecific: () => Effect.succeed({}),
        makeEmpty: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "raw images cannot be emptied", location, errno: "ENOTSUP" })),
        setBacking: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "raw images have no backing file", location, errno: "ENOTSUP" })),
        check: () =>
          Effect.fail(new ImageError({ reason: "Unsupported", message: "This image format does not support checks", location }))
      }
      return image
    }),
    location
  )
}

/** The sector tail past the end of an odd-sized file: reads as zeros, no data. */
const tailStatus = (storage: BlockStorageShape, offset: number, length: number): BlockStatus => ({
  offset,
  length,
  depth: 0,
  present: true,
  zero: true,
  data: false,
  compressed: false,
  hostOffset: offset,
  file: storage.location
})

/** Longest extent one block-status call on a raw file probes (callers loop). */
const RAW_STATUS_WINDOW = 2 * 1024 * 1024

function rawBlockStatus(storage: BlockStorageShape, offset: number, length: number): Effect.Effect<BlockStatus, StorageError> {
  const status = (zero: boolean, extent: number): BlockStatus => ({
    offset,
    length: extent,
    depth: 0,
    present: true,
    zero,
    data: !zero,
    compressed: false,
    hostOffset: offset,
    file: storage.location
  })
  const own = storage.blockStatus
  if (own !== undefined) {
    // The store's own status (an NBD server's): QEMU shows an extent as present when it is data or zeros,
    // with its offset; neither (an unallocated hole) has no offset.
    return Effect.map(own(offset, length), (extent): BlockStatus => {
      const present = extent.data || extent.zero
      const n = Math.max(1, Math.min(length, extent.length))
      if (present) return { ...status(extent.zero, n), data: extent.data }
      return { offset, length: n, depth: 0, present: false, zero: false, data: false, compressed: false }
    })
  }
  const seek = storage.seekExtent
  if (seek !== undefined) {
    // As QEMU's file driver: a hole is zeros up to the next data, data is
    // data up to the next hole (its content is not looked at).
    return Effect.flatMap(seek(offset, "data"), (data) =>
      data > offset
        ? Effect.succeed(status(true, Math.min(length, data - offset)))
        : Effect.map(seek(offset, "hole"), (hole) => status(false, Math.max(1, Math.min(length, hole - offset))))
    )
  }
  return Effect.map(holeStatus(storage, offset, Math.min(length, RAW_STATUS_WINDOW)), (hole) => status(hole.zero, hole.length))
}
