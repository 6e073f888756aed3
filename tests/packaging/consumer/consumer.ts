// A TypeScript consumer, type-checked (strict, lib checking on) against the
// .d.ts files of the installed tarballs. Never run: it only has to compile,
// and its @ts-expect-error lines prove the types are real, not `any`.
import { convert, create, open, ImageError, NoSpaceError, WrongPassphraseError, type ImageErrorReason, type ImageInfo, type MapEntry, type QcowImage } from "@qcow2/node"
import { Effect, Layer } from "effect"
import { createImage, openImage, type Image } from "@qcow2/image"
import { NodeStorageOpener } from "@qcow2/storage-node"
import { NodeClusterCodec } from "@qcow2/compress/node"
import { layerNode } from "@qcow2/crypto/node"
import { decodeHeader, type Header } from "@qcow2/format"
import { HttpStorageOpener } from "@qcow2/storage-http"

type IsAny<T> = 0 extends 1 & T ? true : false
const notAny = <T>(_: IsAny<T> extends false ? T : never): void => undefined

export async function promiseApi(path: string, signal: AbortSignal): Promise<string> {
  await create(path, { size: 64 * 2 ** 20, clusterSize: 65536, compressionType: "zstd" })
  await create(`${path}.raw`, { format: "raw", size: 2 ** 20 })
  await using img = await open(path, { readOnly: false, format: "qcow2", passphrase: "secret" })
  notAny<QcowImage>(img)
  await img.write(1 << 20, new Uint8Array(512))
  const got: Uint8Array = await img.read(1 << 20, 65536)
  const into: Uint8Array = await img.readInto(0, new Uint8Array(512))
  await img.writeZeroes(0, 4096, { unmap: true })
  await img.discard(0, 65536)
  await img.writeCompressed(0, new Uint8Array(65536))
  const info: ImageInfo = await img.info()
  const chain: ImageInfo[] = await img.info({ backingChain: true })
  const extents: MapEntry[] = await img.map({ start: 0 })
  const status = await img.blockStatus(0, 65536)
  const checked = await img.check({ repair: "leaks" })
  await img.resize(128 * 2 ** 20)
  await img.flush()
  // @ts-expect-error offsets are numbers
  await img.write("0", got)
  try {
    await convert(path, `${path}.out`, { outFormat: "qcow2", compress: true, signal, onProgress: ({ bytesDone, bytesTotal }) => void (bytesDone / bytesTotal) })
  } catch (e) {
    if (e instanceof WrongPassphraseError || e instanceof NoSpaceError) return e.reason
    if (e instanceof ImageError) {
      const reason: ImageErrorReason = e.reason
      // @ts-expect-error reason is a closed union
      const wrong: typeof e.reason = "NoSuchReason"
      return `${reason} ${wrong} ${e._tag}`
    }
  }
  return `${got.length} ${into.length} ${info["virtual-size"]} ${chain.length} ${extents.length} ${status.length} ${checked.corruptions}`
}

const layer = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer, layerNode)

export const effectApi: Effect.Effect<number> = Effect.gen(function* () {
  yield* createImage("disk.qcow2", { size: 2 ** 20 })
  const image: Image = yield* openImage("disk.qcow2", { readOnly: true })
  const bytes = new Uint8Array(512)
  yield* image.read(0, bytes)
  return image.virtualSize
}).pipe(
  Effect.scoped,
  Effect.catchTag("ImageError", (e) => Effect.succeed(e.reason.length)),
  Effect.provide(layer)
)

// @ts-expect-error without its layers the program still needs the storage and codec services
export const unprovided: Effect.Effect<void> = Effect.scoped(createImage("disk.qcow2", { size: 2 ** 20 }))

export const header = (bytes: Uint8Array): Header => decodeHeader(bytes)
export const httpOpener = HttpStorageOpener.make()
