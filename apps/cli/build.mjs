/**
 * Bundles the CLI with esbuild:
 * - dist/qcow2.cjs: the whole CLI as one minified CommonJS bundle. Dynamic
 *   imports become lazy requires, so code a command does not use is never
 *   evaluated (effect/cli for help and errors, the other commands, the
 *   compression pool, the HTTP backend, node:crypto).
 * - dist/qcow2.mjs: the executable (src/entry.ts), which runs the bundle
 *   with a V8 code cache kept in dist/cache/.
 * - dist/qemu-img.mjs, dist/qemu-io.mjs: the same executable under QEMU's
 *   program names, for machines without QEMU: run by those names, the CLI
 *   is qemu-img / qemu-io (src/progname.ts).
 */
import { build } from "esbuild"
import { createHash } from "node:crypto"
import * as fs from "node:fs"

fs.rmSync("dist", { recursive: true, force: true })

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  conditions: ["@qcow2/source"],
  minify: true,
  charset: "ascii",
  legalComments: "none",
  logLevel: "warning",
  // koffi (fcntl for image locking) finds its native binary next to its own
  // files, so it stays a runtime require, resolved from node_modules.
  external: ["koffi"]
}

await build({
  ...common,
  entryPoints: ["src/main.ts"],
  format: "cjs",
  outfile: "dist/qcow2.cjs",
  supported: { "dynamic-import": false },
  sourcemap: "linked"
})

const hash = createHash("sha256").update(fs.readFileSync("dist/qcow2.cjs")).digest("hex").slice(0, 16)

await build({
  ...common,
  entryPoints: ["src/entry.ts"],
  format: "esm",
  outfile: "dist/qcow2.mjs",
  define: { QCOW2_BUNDLE_HASH: JSON.stringify(hash) }
})

for (const name of ["qemu-img", "qemu-io"]) {
  fs.copyFileSync("dist/qcow2.mjs", `dist/${name}.mjs`)
  fs.chmodSync(`dist/${name}.mjs`, 0o755)
}
