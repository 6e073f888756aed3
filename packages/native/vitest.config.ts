import { defineConfig } from "vitest/config"

export default defineConfig({
  resolve: { conditions: ["@qcow2/source"] },
  ssr: { resolve: { conditions: ["@qcow2/source"] } },
  test: { testTimeout: 60_000, hookTimeout: 60_000 }
})
