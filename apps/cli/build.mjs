import { build } from "esbuild"

await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  outfile: "dist/qcow2.mjs",
  conditions: ["@qcow2/source"],
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __qcow2CreateRequire } from 'node:module'; const require = __qcow2CreateRequire(import.meta.url);"
  },
  sourcemap: "linked",
  logLevel: "warning"
})
