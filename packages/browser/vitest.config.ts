import { defineConfig } from "vitest/config"

// `pnpm bench` (BENCH=1) runs the figures in bench/ instead of the tests.
export default defineConfig({
  resolve: { conditions: ["@qcow2/source"] },
  ssr: { resolve: { conditions: ["@qcow2/source"] } },
  test: { testTimeout: 300_000, hookTimeout: 120_000, include: process.env.BENCH === "1" ? ["bench/**/*.test.ts"] : ["test/**/*.test.ts"] }
})
