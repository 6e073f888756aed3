import { defineConfig } from "vitest/config"

// Packing, installing from the npm registry and type-checking take a while on a busy machine.
export default defineConfig({
  test: { testTimeout: 180_000, hookTimeout: 300_000 }
})
