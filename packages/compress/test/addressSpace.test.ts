/**
 * Under an address-space limit (`ulimit -v`, as on shared hosts and some
 * containers) V8 cannot reserve a wasm memory: on 64-bit hosts it reserves
 * ~10 GiB per 32-bit memory (8 GiB + guard regions, for bounds checks by the
 * MMU), whatever the declared maximum; Node 20 has no fallback short of the
 * `--disable-wasm-trap-handler` flag. Deflate images must still read and
 * write there (the zstd wasm is only instantiated by the first zstd cluster),
 * zstd clusters decode (with the system's libzstd on Node, else with the
 * TypeScript decoder), and zstd compression works on Node (libzstd) and
 * elsewhere fails with a typed CompressionError, not a defect.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { build } from "esbuild"
import { afterAll, describe, expect, it } from "vitest"

/** 2 GB of address space: far more than Node needs, far less than one wasm memory reservation. */
const LIMIT_KIB = 2_000_000

const dir = mkdtempSync(join(tmpdir(), "qcow2-compress-ulimit-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const ENTRY = `
import { deflateRawSync } from "node:zlib"
import { Effect } from "effect"
import { NodeClusterCodec, PortableClusterCodec } from "../src/node.ts"

const data = new TextEncoder().encode("compressed cluster under ulimit -v ".repeat(2000)).subarray(0, 65536)
// A QEMU-style deflate cluster (raw, window 2^12, memLevel 9) and a zstd frame made outside this process.
const deflated = deflateRawSync(data, { level: 6, windowBits: 12, memLevel: 9 })
const zstdFrame = Uint8Array.from(Buffer.from(process.argv[2], "base64"))
let wasmMemory = "ok"
try {
  new WebAssembly.Memory({ initial: 1, maximum: 1 })
} catch (error) {
  wasmMemory = String(error)
}
const outcome = (exit, out) =>
  exit._tag === "Success"
    ? Buffer.compare(out, data) === 0 ? "ok" : "mismatch"
    : exit.cause.reasons[0]?._tag === "Fail"
      ? exit.cause.reasons[0].error._tag + "/" + exit.cause.reasons[0].error.reason + ": " + exit.cause.reasons[0].error.message
      : "defect: " + String(exit.cause)
const program = Effect.gen(function* () {
  const results = { wasmMemory }
  for (const [name, make] of [["node", NodeClusterCodec.make], ["portable", PortableClusterCodec.make]]) {
    const codec = yield* make
    const ours = yield* codec.compress(0, data)
    let out = new Uint8Array(65536)
    results[name + " deflate"] = outcome(yield* Effect.exit(codec.decompress(0, deflated, out)), out)
    out = new Uint8Array(65536)
    results[name + " deflate (own)"] = outcome(yield* Effect.exit(codec.decompress(0, ours, out)), out)
    out = new Uint8Array(65536)
    results[name + " zstd"] = outcome(yield* Effect.exit(codec.decompress(1, zstdFrame, out)), out)
    const compressed = yield* Effect.exit(codec.compress(1, data))
    results[name + " zstd compress"] = compressed._tag === "Success" ? "ok" : outcome(compressed, out)
  }
  return results
})
Effect.runPromise(program).then((results) => console.log(JSON.stringify(results)))
`

describe.skipIf(process.platform !== "linux")(`with ulimit -v ${LIMIT_KIB} (KiB)`, () => {
  it("deflate clusters decode and encode, zstd clusters decode; zstd compression needs libzstd or fails with a typed error where no wasm memory fits", async () => {
    const outfile = join(dir, "ulimit.mjs")
    await build({
      stdin: { contents: ENTRY, resolveDir: import.meta.dirname, loader: "ts", sourcefile: "entry.ts" },
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      outfile,
      conditions: ["@qcow2/source"],
      logLevel: "silent"
    })
    const { compress: packageCompress, init } = await import("@bokuweb/zstd-wasm")
    await init()
    const data = new TextEncoder().encode("compressed cluster under ulimit -v ".repeat(2000)).subarray(0, 65536)
    const frame = Buffer.from(packageCompress(data, 3)).toString("base64")
    const output = execFileSync(
      "bash",
      ["-c", `ulimit -v ${LIMIT_KIB} && exec "$0" "$@"`, process.execPath, outfile, frame],
      { cwd: dir, encoding: "utf8", timeout: 60_000 }
    )
    const results = JSON.parse(output.trim()) as Record<string, string>
    for (const name of ["node", "portable"]) {
      expect(results[`${name} deflate`], name).toBe("ok")
      expect(results[`${name} deflate (own)`], name).toBe("ok")
      expect(results[`${name} zstd`], name).toBe("ok")
      // Node's codec compresses with the system's libzstd, which needs no wasm memory.
      if (results.wasmMemory === "ok" || name === "node") expect(results[`${name} zstd compress`], name).toBe("ok")
      else expect(results[`${name} zstd compress`], name).toMatch(/^CompressionError\/Failed: zstd compression needs WebAssembly, which failed here: .*Out of memory/)
    }
  })
})
