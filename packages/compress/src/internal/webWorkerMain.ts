/**
 * The program of a Web Worker of the browser compression pool
 * (WebCompressionPool.ts). Not imported by the package: it is bundled by
 * `scripts/embed-web-worker.mjs` into one self-contained script, stored as a
 * string in `webWorkerSource.ts`, and started from a Blob URL, so no worker
 * file has to be served next to the page or found by a bundler.
 *
 * Messages in: first `{ zstdModule }` (the compiled zstd wasm, or undefined),
 * then jobs `{ id, type, level, data }`. Each job is answered with
 * `{ id, ok: true, result, input }` (the input's memory handed back for
 * reuse, the result transferred) or `{ id, ok: false, message }`, as the
 * worker threads of the Node pool answer.
 */
import { portableDeflateKernels } from "./deflatePortable.js"
import { createZstdKernel, type ZstdKernel } from "./zstdKernel.js"

interface Job {
  readonly id: number
  readonly type: number
  readonly level: number
  readonly data: Uint8Array
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<Job | { readonly zstdModule: WebAssembly.Module | undefined }>) => void) | null
  postMessage(message: unknown, transfer: Array<Transferable>): void
}

const scope = globalThis as unknown as WorkerScope
const deflate = portableDeflateKernels().deflate
let zstdModule: WebAssembly.Module | undefined
let zstd: ZstdKernel | undefined

const compress = (job: Job): Uint8Array | undefined => {
  if (job.type === 0) return deflate(job.data, job.level)
  if (zstd === undefined) {
    if (zstdModule === undefined) throw new Error("zstd compression needs WebAssembly, which is not available in this worker")
    zstd = createZstdKernel(zstdModule)
  }
  return zstd.compress(job.data, job.data.length - 1, job.level)
}

scope.onmessage = (event) => {
  const message = event.data
  if (!("id" in message)) {
    zstdModule = message.zstdModule
    return
  }
  try {
    const result = compress(message)
    const input = message.data
    if (result === undefined) {
      scope.postMessage({ id: message.id, ok: true, result: undefined, input }, [input.buffer as ArrayBuffer])
    } else {
      const owned = result.byteOffset === 0 && result.byteLength === result.buffer.byteLength ? result : result.slice()
      scope.postMessage({ id: message.id, ok: true, result: owned, input }, [owned.buffer as ArrayBuffer, input.buffer as ArrayBuffer])
    }
  } catch (error) {
    scope.postMessage({ id: message.id, ok: false, message: error instanceof Error ? error.message : String(error) }, [])
  }
}
