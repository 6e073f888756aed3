// An Effect user of the same packages: the layers wired by hand (node:fs
// storage, the node:zlib/zstd codec, node:crypto ciphers), then create,
// write, read and check an image in one scope. Prints one JSON line.
import { Effect, Layer } from "effect"
import { createImage, openImage } from "@qcow2/image"
import { NodeStorageOpener } from "@qcow2/storage-node"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { layerNode } from "@qcow2/crypto/node"

const dir = process.argv[2]
const MiB = 2 ** 20
const image = `${dir}/effect.qcow2`

const program = Effect.gen(function* () {
  yield* createImage(image, { size: 8 * MiB, clusterSize: 4096 })
  const img = yield* openImage(image, { readOnly: false })
  yield* img.write(3 * MiB, new Uint8Array(256 * 1024).fill(0x5a))
  yield* img.writeZeroes(3 * MiB + 8192, 4096)
  yield* img.flush()
  const back = new Uint8Array(256 * 1024)
  yield* img.read(3 * MiB, back)
  const check = yield* img.check()
  return {
    readBack: back.subarray(0, 8192).every((b) => b === 0x5a) && back.subarray(8192, 12288).every((b) => b === 0) && back.subarray(12288).every((b) => b === 0x5a),
    check
  }
})

const layer = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer, layerNode)
const result = await Effect.runPromise(program.pipe(Effect.scoped, Effect.provide(layer)))
console.log(JSON.stringify(result))
