/**
 * The pool's worker code and the embedded zstd wasm must work when the CLI is bundled by
 * esbuild into one file that is run far from any node_modules (apps/cli/build.mjs does this).
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { build } from "esbuild"
import { afterAll, describe, expect, it } from "vitest"

const dir = mkdtempSync(join(tmpdir(), "qcow2-compress-bundle-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const ENTRY = `
import { Effect } from "effect"
import { makeCompressionPool, NodeClusterCodec, PortableClusterCodec } from "../src/node.ts"

const data = new TextEncoder().encode("bundled cluster ".repeat(5000)).subarray(0, 65536)
const program = Effect.scoped(
  Effect.gen(function* () {
    const node = yield* NodeClusterCodec.make
    const portable = yield* PortableClusterCodec.make
    const pool = yield* makeCompressionPool({ workers: 2 })
    const results = yield* Effect.forEach([0, 1, 0, 1], (type) => pool.compress(type, data), { concurrency: 4 })
    const out = new Uint8Array(65536)
    for (const [i, compressed] of results.entries()) {
      const codec = i < 2 ? node : portable
      yield* codec.decompress(i % 2, compressed, out)
      if (Buffer.compare(out, data) !== 0) throw new Error("mismatch in result " + i)
    }
    return results.map((r) => r.length)
  })
)
Effect.runPromise(program).then((sizes) => console.log(JSON.stringify({ ok: true, sizes })))
`

describe("bundled into a single file by esbuild", () => {
  for (const [name, options] of [
    ["as apps/cli/build.mjs does", {}],
    ["minified", { minify: true }],
    ["with keepNames", { keepNames: true }]
  ] as const) {
    it(`runs the pool and both codecs (${name})`, async () => {
      const outfile = join(dir, `bundle-${name.replace(/\W+/g, "-")}.mjs`)
      await build({
        stdin: { contents: ENTRY, resolveDir: import.meta.dirname, loader: "ts", sourcefile: "entry.ts" },
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node20",
        outfile,
        conditions: ["@qcow2/source"],
        banner: {
          js: "import { createRequire as __qcow2CreateRequire } from 'node:module'; const require = __qcow2CreateRequire(import.meta.url);"
        },
        logLevel: "silent",
        ...options
      })
      const output = execFileSync(process.execPath, [outfile], { cwd: dir, encoding: "utf8", timeout: 60_000 })
      const result = JSON.parse(output.trim()) as { ok: boolean; sizes: Array<number> }
      expect(result.ok).toBe(true)
      expect(result.sizes).toHaveLength(4)
      for (const size of result.sizes) expect(size).toBeLessThan(2000)
    })
  }
})
