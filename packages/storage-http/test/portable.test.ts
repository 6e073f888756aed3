import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const srcDir = join(import.meta.dirname, "..", "src")

describe("portability", () => {
  it("src/ imports no Node built-in, no undici, no Buffer: only the global fetch", () => {
    const files = readdirSync(srcDir).filter((f) => f.endsWith(".ts"))
    expect(files.length).toBeGreaterThan(3)
    for (const file of files) {
      const text = readFileSync(join(srcDir, file), "utf8")
      const imports = [...text.matchAll(/(?:from|import)\s*\(?\s*"([^"]+)"/g)].map((m) => m[1])
      for (const spec of imports) {
        expect(spec, `${file} imports ${spec}`).toMatch(/^(\.\/|effect$|@qcow2\/storage$)/)
      }
      expect(text, `${file} uses Buffer`).not.toMatch(/\bBuffer\b/)
      expect(text, `${file} uses process`).not.toMatch(/\bprocess\./)
    }
  })
})
