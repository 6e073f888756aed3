import { defineConfig } from "vite"

// Bundles the workspace packages from their TypeScript sources (the
// "@qcow2/source" export condition), so the app needs no prior package build.
export default defineConfig({
  base: "./",
  resolve: { conditions: ["@qcow2/source", "browser", "module", "import", "default"] },
  build: { target: "es2022", outDir: "dist", emptyOutDir: true, sourcemap: true }
})
