import { createHash } from "node:crypto"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { describe, expect, it } from "vitest"
import { ZSTD_WASM_SHA256, ZSTD_WASM_SIZE, ZSTD_WASM_SOURCE } from "../src/internal/zstdWasmData.js"
import { zstdWasmBytes } from "../src/internal/zstdModule.js"

describe("embedded zstd wasm", () => {
  it("is the binary of the pinned @bokuweb/zstd-wasm (regenerate with `pnpm embed-wasm` after an upgrade)", () => {
    const require = createRequire(import.meta.url)
    const entry = require.resolve("@bokuweb/zstd-wasm")
    const version = JSON.parse(readFileSync(join(dirname(entry), "..", "..", "package.json"), "utf8")).version
    const original = readFileSync(join(dirname(entry), "zstd.wasm"))
    const embedded = zstdWasmBytes()
    expect(ZSTD_WASM_SOURCE).toBe(`@bokuweb/zstd-wasm@${version}`)
    expect(embedded.length).toBe(ZSTD_WASM_SIZE)
    expect(createHash("sha256").update(embedded).digest("hex")).toBe(ZSTD_WASM_SHA256)
    expect(Buffer.compare(embedded, original)).toBe(0)
  })
})
