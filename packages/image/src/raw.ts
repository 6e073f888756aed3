import { Effect } from "effect"
import type { BlockStorageShape } from "@qcow2/storage"
import type { BlockStatus, Image } from "./api.js"
import { ImageError } from "./errors.js"
import { asImageError, checkRange } from "./internal/errors.js"

/** Granularity at which raw files are probed for all-zero blocks in block status. */
const ZERO_PROBE = 4096
/** True when every byte is zero (word-wise where alignment allows). */
export const isZero = (bytes: Uint8Array): boolean => {
  if (bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4)
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false
    return true
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

/**
 * A raw image: guest offset == file offset. Used as a backing file or data
 * source and for `-f raw`. Block status reports all-zero 4 KiB blocks as
 * zero (QEMU reads holes from the file system; content is the portable
 * approximation).
 */
export function makeRawImage(storage: BlockStorageShape, readOnly: boolean): Effect.Effect<Image, ImageError> {
  const location = storage.location
  return asImageError(
    Effect.map(storage.size(), (initialSize) => {
      let size = initialSize
      const guard = (offset: number, length: number) => {
        const bad = checkRange(location, size, offset, length)
        return bad
      }
      const requireWritable = (): ImageError | undefined =>
        readOnly ? new ImageError({ reason: "ReadOnly", message: `${location} is opened read-only`, location }) : undefined
      const image: Image = {
        format: "raw",
        location,
        readOnly,
        get virtualSize() {
          return size
        },
        clusterSize: 512,
        header: undefined,
        snapshots: [],
        backing: undefined,
        backingFileName: undefined,
        backingFileResolved: undefined,
        dataFile: undefined,
        read: (offset, into) => {
          const bad = guard(offset, into.length)
          return bad ? Effect.fail(bad) : asImageError(storage.read(offset, into), location)
        },
        write: (offset, data) => {
          const bad = requireWritable() ?? guard(offset, data.length)
          return bad ? Effect.fail(bad) : asImageError(storage.write(offset, data), location)
        },
        writeZeroes: (offset, length) => {
          const bad = requireWritable() ?? guard(offset, length)
          if (bad) return Effect.fail(bad)
          return asImageError(
            Effect.gen(function* () {
              const chunk = new Uint8Array(Math.min(length, 1 << 20))
              for (let done = 0; done < length; done += chunk.length) {
                yield* storage.write(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)))
              }
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
        flush: () => asImageError(storage.flush(), location),
        truncate: (newSize, options) => {
          const bad = requireWritable()
          if (bad) return Effect.fail(bad)
          if (newSize < size && !options?.shrink) {
            return Effect.fail(
              new ImageError({ reason: "InvalidArgument", message: "Use the --shrink option to perform a shrink operation.", location })
            )
          }
          return asImageError(
            Effect.map(storage.resize(newSize), () => {
              size = newSize
            }),
            location
          )
        },
        blockStatus: (offset, length) => {
          const bad = guard(offset, length)
          if (bad) return Effect.fail(bad)
          return asImageError(rawBlockStatus(storage, offset, Math.min(length, size - offset)), location)
        },
        check: () =>
          Effect.fail(new ImageError({ reason: "Unsupported", message: "This image format does not support checks", location }))
      }
      return image
    }),
    location
  )
}

/** Longest extent one block-status call on a raw file probes (callers loop). */
const RAW_STATUS_WINDOW = 2 * 1024 * 1024

function rawBlockStatus(storage: BlockStorageShape, offset: number, length: number): Effect.Effect<BlockStatus, unknown> {
  return Effect.gen(function* () {
    const window = new Uint8Array(Math.min(length, RAW_STATUS_WINDOW))
    yield* storage.read(offset, window)
    let done = 0
    let zero: boolean | undefined
    while (done < window.length) {
      const start = offset + done
      const n = Math.min(ZERO_PROBE - (start % ZERO_PROBE), window.length - done)
      const z = isZero(window.subarray(done, done + n))
      if (zero === undefined) zero = z
      else if (z !== zero) break
      done += n
    }
    const isHole = zero ?? true
    return {
      offset,
      length: done,
      depth: 0,
      present: true,
      zero: isHole,
      data: !isHole,
      compressed: false,
      hostOffset: offset,
      file: storage.location
    }
  })
}
