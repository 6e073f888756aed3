// A Node user of the Promise API, run from a project that installed the packed
// tarballs with npm. Prints one JSON line: what it read back and what the
// API reported; the test checks the images with qemu-img.
import { convert, create, open, AbortError, ImageError } from "@qcow2/node"

const dir = process.argv[2]
const MiB = 2 ** 20
const fill = (length, byte) => new Uint8Array(length).fill(byte)
const everyByteIs = (bytes, byte) => bytes.every((b) => b === byte)

const image = `${dir}/promise.qcow2`
await create(image, { size: 16 * MiB })
const img = await open(image)
let result
try {
  await img.write(1000, fill(70000, 0xaa))
  await img.write(MiB, fill(128 * 1024, 0xbb))
  await img.writeZeroes(MiB + 4096, 8192)
  await img.write(2 * MiB, fill(65536, 0xdd))
  await img.discard(2 * MiB, 65536)
  await img.writeCompressed(4 * MiB, fill(65536, 0xcc))
  await img.flush()
  const into = new Uint8Array(4096)
  await img.readInto(4 * MiB, into)
  result = {
    readBack:
      everyByteIs(await img.read(1000, 70000), 0xaa) &&
      everyByteIs(await img.read(MiB + 4096, 8192), 0) &&
      everyByteIs(await img.read(2 * MiB, 65536), 0) &&
      everyByteIs(into, 0xcc),
    check: await img.check(),
    info: await img.info()
  }
} finally {
  await img.close()
}

let lastProgress
await convert(image, `${dir}/promise.raw`, { onProgress: (p) => (lastProgress = p) })
await convert(image, `${dir}/promise-c.qcow2`, { outFormat: "qcow2", compress: true })

const aborted = new AbortController()
aborted.abort()
const abort = await convert(image, `${dir}/aborted.raw`, { signal: aborted.signal }).then(() => "resolved", (e) => e instanceof AbortError && e.name)
const notQcow2 = await open(`${dir}/promise.raw`, { format: "qcow2" }).then(() => "opened", (e) => e instanceof ImageError && e.reason)

console.log(JSON.stringify({ ...result, lastProgress, abort, notQcow2 }))
