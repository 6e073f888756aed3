/**
 * QEMU's compress filter (block/filter-compress.c, `driver=compress` over a
 * qcow2 node): every write is stored compressed. Its request alignment is
 * the image's cluster size, so QEMU's block layer pads a write to whole
 * clusters, reading the rest of the first and last cluster from the image
 * (read-modify-write), and the padded range goes down as one compressed
 * write. As there, a compressed write cannot overwrite a cluster holding
 * data (EIO), and `write -c` through the filter is not supported. Reads,
 * write-zeroes, discard and everything else pass through.
 */
import { Effect } from "effect"
import { ImageError, type Image, type NodeDriver } from "@qcow2/image"

/** QEMU's refusal of a node the filter cannot compress into (compress_open): only qcow2 compresses here. */
export const compressRefusal = (driver: NodeDriver | "file" | "host_device" | "host_cdrom"): string | undefined =>
  driver === "qcow2" ? undefined : `Compression is not supported for underlying format: ${driver}`

/** Clusters of one compressed write QEMU's qcow2 driver stores at once (QCOW2_MAX_WORKERS). */
const COMPRESS_TASKS = 8

/** `image` seen through the compress filter. */
export const compressFilter = (image: Image): Image => {
  const write = (offset: number, data: Uint8Array): Effect.Effect<void, ImageError> =>
    Effect.gen(function* () {
      if (data.length === 0) return yield* image.write(offset, data)
      const cluster = image.clusterSize
      const start = Math.floor(offset / cluster) * cluster
      const end = Math.min(image.virtualSize, Math.ceil((offset + data.length) / cluster) * cluster)
      let padded = data
      if (start !== offset || end !== offset + data.length) {
        padded = new Uint8Array(Math.max(end, offset + data.length) - start)
        if (offset > start) yield* image.read(start, padded.subarray(0, offset - start))
        if (end > offset + data.length) yield* image.read(offset + data.length, padded.subarray(offset + data.length - start))
        padded.set(data, offset - start)
      }
      // QEMU's qcow2 stores each cluster of a compressed write as its own task, up to 8 at once: a cluster
      // that fails (one holding data) does not stop the others already started; the first failure is returned.
      let failure: ImageError | undefined
      for (let index = 0; index * cluster < padded.length; index++) {
        if (failure !== undefined && index >= COMPRESS_TASKS) break
        const piece = padded.subarray(index * cluster, Math.min(padded.length, (index + 1) * cluster))
        const result = yield* Effect.result(image.writeCompressed(start + index * cluster, piece))
        if (result._tag === "Failure") failure ??= result.failure
      }
      if (failure !== undefined) return yield* Effect.fail(failure)
    })
  const filtered: Image = Object.create(image)
  return Object.assign(filtered, {
    write,
    writeCompressed: () => Effect.fail(new ImageError({ reason: "Unsupported", message: "compressed writes through the compress filter", location: image.location, errno: "ENOTSUP" }))
  })
}
