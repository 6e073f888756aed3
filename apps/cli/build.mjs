/**
 * Bundles the CLI with esbuild: dist/qcow2.mjs is the entry; code that only
 * some commands use (effect/cli, the compression pool, the HTTP backend,
 * each command) goes into chunks under dist/chunks/ that are loaded on
 * demand. Minified: less to read and compile at every start.
 */
import { build } from "esbuild"
import * as fs from "node:fs"

fs.rmSync("dist", { recursive: true, force: true })

await build({
  entryPoints: { qcow2: "src/main.ts" },
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  outdir: "dist",
  outExtension: { ".js": ".mjs" },
  chunkNames: "chunks/[name]-[hash]",
  conditions: ["@qcow2/source"],
  minify: true,
  charset: "ascii",
  legalComments: "none",
  banner: {
    js: "import { createRequire as __qcow2CreateRequire } from 'node:module'; const require = __qcow2CreateRequire(import.meta.url);"
  },
  sourcemap: "linked",
  logLevel: "warning"
})
