/**
 * Library-level benchmark bodies, bundled by bench/run.mjs with esbuild
 * (module resolution from apps/cli). Each function opens an image through
 * @qcow2/image with the Node file backend, like the CLI does.
 */
import { Effect, Layer } from "effect"
import { openImage } from "@qcow2/image"
import { NodeStorageOpener } from "@qcow2/storage-node"
import { NodeClusterCodec } from "@qcow2/compress/node"

const env = Layer.mergeAll(NodeStorageOpener.layer, NodeClusterCodec.layer)

/** xorshift32: cheap, deterministic offsets. */
const rng = (seed: number) => {
  let x = seed >>> 0 || 1
  return (): number => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x
  }
}

/**
 * Random aligned reads of `size` bytes for `seconds`, `depth` requests in
 * flight. Returns completed reads and elapsed seconds.
 */
export const randomReads = (file: string, size: number, depth: number, seconds: number): Promise<{ reads: number; seconds: number }> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const image = yield* openImage(file, { readOnly: true })
        const blocks = Math.floor(image.virtualSize / size)
        let reads = 0
        const start = performance.now()
        const deadline = start + seconds * 1000
        const worker = (seed: number) =>
          Effect.gen(function* () {
            const next = rng(seed)
            const buf = new Uint8Array(size)
            while (performance.now() < deadline) {
              const offset = (next() % blocks) * size
              yield* image.read(offset, buf)
              reads++
            }
          })
        yield* Effect.all(
          Array.from({ length: depth }, (_, i) => worker(0x9e3779b9 * (i + 1))),
          { concurrency: "unbounded", discard: true }
        )
        return { reads, seconds: (performance.now() - start) / 1000 }
      })
    ).pipe(Effect.provide(env))
  )
