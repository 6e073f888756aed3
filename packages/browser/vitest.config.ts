import { defineConfig } from "vitest/config"

export default defineConfig({
  resolve: { conditions: ["@qcow2/source"] },
  ssr: { resolve: { conditions: ["@qcow2/source"] } },
  test: { testTimeout: 120_000, hookTimeout: 120_000, include: ["test/**/*.test.ts"] }
})
