// Throughput of cluster compression: main thread vs worker pool.
// Usage: pnpm --filter @qcow2/compress bench [-- --mib 256 --cluster 65536]
// Builds dist/ first (see package.json "bench"). Data: 1/3 random, 1/3 text, 1/3 zeros.
import { randomFillSync } from "node:crypto"
import { availableParallelism } from "node:os"
import { Effect } from "effect"
import { makeClusterKernels } from "../dist/internal/codec.js"
import { portableDeflateKernels } from "../dist/internal/deflatePortable.js"
import { nodeDeflateKernels } from "../dist/internal/nodeKernels.js"
import { zstdKernel } from "../dist/internal/zstdModule.js"
import { makeCompressionPool } from "../dist/node.js"

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : fallback
}
const mib = arg("mib", 256)
const clusterSize = arg("cluster", 65536)
const count = Math.floor((mib * 1024 * 1024) / clusterSize)
const total = count * clusterSize

const words = "qcow2 cluster refcount table header snapshot backing compressed zstd deflate sector offset guest host".split(" ")
const textCluster = (seed) => {
  const out = new Uint8Array(clusterSize)
  let x = seed
  let i = 0
  while (i < clusterSize) {
    x = (x * 1103515245 + 12345) >>> 0
    const w = words[(x >>> 16) % words.length]
    for (let k = 0; k < w.length && i < clusterSize; k++) out[i++] = w.charCodeAt(k)
    if (i < clusterSize) out[i++] = (x & 15) === 0 ? 10 : 32
  }
  return out
}
const texts = Array.from({ length: 64 }, (_, i) => textCluster(i + 1))
const data = new Uint8Array(total)
for (let i = 0; i < count; i++) {
  const c = data.subarray(i * clusterSize, (i + 1) * clusterSize)
  if (i % 3 === 0) randomFillSync(c)
  else if (i % 3 === 1) c.set(texts[i % texts.length])
}
const clusters = Array.from({ length: count }, (_, i) => data.subarray(i * clusterSize, (i + 1) * clusterSize))

const rows = []
// Wall-clock MB/s, and MB per CPU-second of the whole process (main thread + workers): on a
// shared, loaded machine the second one is the stable figure.
let cpuStart = process.cpuUsage()
const startCpu = () => {
  cpuStart = process.cpuUsage()
}
const cpuSeconds = () => {
  const d = process.cpuUsage(cpuStart)
  return (d.user + d.system) / 1e6
}
const record = (label, seconds, compressedBytes, stored, bytes = total) => {
  const cpu = cpuSeconds()
  const row = {
    label,
    mbps: Math.round(bytes / 1e6 / seconds),
    mbPerCpuSecond: Math.round(bytes / 1e6 / cpu),
    seconds: +seconds.toFixed(2)
  }
  if (compressedBytes !== undefined) Object.assign(row, { ratio: +(compressedBytes / total).toFixed(3), stored })
  rows.push(row)
  console.log(JSON.stringify(row))
}
const sizeOf = (results) => results.reduce((n, r) => n + (r === undefined ? clusterSize : r.length), 0)
const storedCount = (results) => results.filter((r) => r !== undefined).length

// The synchronous kernels NodeClusterCodec and PortableClusterCodec run per cluster.
const zstd = await zstdKernel()
const node = makeClusterKernels(nodeDeflateKernels(), () => zstd)
const portable = makeClusterKernels(portableDeflateKernels(), () => zstd)

const mainThread = (label, codec, type) => {
  startCpu()
  const t = performance.now()
  const results = clusters.map((c) => codec.compress(type, c))
  record(label, (performance.now() - t) / 1000, sizeOf(results), storedCount(results))
  return results
}

const poolRun = (label, workers, type, transfer) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const pool = yield* makeCompressionPool({ workers })
        // warm-up (worker start, wasm instantiation) outside the timing
        yield* Effect.forEach([0, 1], (t) => pool.compress(t, clusters[1]), { concurrency: 2 })
        const inputs = transfer ? clusters.map((c) => new Uint8Array(c)) : clusters
        startCpu()
        const t = performance.now()
        const results = yield* Effect.forEach(inputs, (c) => pool.compress(type, c, undefined, { transfer }), {
          concurrency: workers * 4
        })
        record(label, (performance.now() - t) / 1000, sizeOf(results), storedCount(results))
      })
    )
  )

console.log(
  JSON.stringify({ mib, clusterSize, clusters: count, cores: availableParallelism(), node: process.version })
)
const deflated = mainThread("deflate, main thread, node:zlib", node, 0)
await poolRun("deflate, pool of 1 worker", 1, 0, false)
await poolRun(`deflate, pool of ${availableParallelism()} workers`, availableParallelism(), 0, false)
await poolRun(`deflate, pool of ${availableParallelism()} workers, transfer`, availableParallelism(), 0, true)
const zstded = mainThread("zstd, main thread, wasm", node, 1)
await poolRun("zstd, pool of 1 worker", 1, 1, false)
await poolRun(`zstd, pool of ${availableParallelism()} workers`, availableParallelism(), 1, false)
mainThread("deflate, main thread, pako (portable)", portable, 0)

const decode = (label, codec, type, compressed) => {
  const out = new Uint8Array(clusterSize)
  startCpu()
  const t = performance.now()
  let bytes = 0
  compressed.forEach((c) => {
    if (c === undefined) return
    codec.decompress(type, c, out)
    bytes += clusterSize
  })
  record(label, (performance.now() - t) / 1000, undefined, undefined, bytes)
}
decode("inflate, node:zlib (output MB/s)", node, 0, deflated)
decode("inflate, pako (output MB/s)", portable, 0, deflated)
decode("zstd decode, wasm (output MB/s)", node, 1, zstded)
