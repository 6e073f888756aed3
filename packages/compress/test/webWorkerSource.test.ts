/**
 * The browser pool's worker program is stored bundled (webWorkerSource.ts);
 * it must be what the script builds from the current sources. The browser
 * entry points must bundle for a browser without any `node:` module.
 */
import { build } from "esbuild"
import { describe, expect, it } from "vitest"
import { WEB_WORKER_SOURCE } from "../src/internal/webWorkerSource.js"
// @ts-expect-error: a plain .mjs script without declarations
import { bundleWebWorker } from "../scripts/embed-web-worker.mjs"

describe("browser entry points", () => {
  it("the stored Web Worker program is current (regenerate with `pnpm embed-worker`)", async () => {
    expect(WEB_WORKER_SOURCE).toBe(await bundleWebWorker())
  })

  for (const conditions of [["@qcow2/source", "browser"], ["browser"]]) {
    it(`"." , "./runtime" and "./web" bundle for a browser with no node: import (conditions ${conditions.join(", ")})`, async () => {
      const result = await build({
        stdin: {
          contents: `export * from "@qcow2/compress"; export * from "@qcow2/compress/runtime"; export * from "@qcow2/compress/web"`,
          resolveDir: import.meta.dirname,
          loader: "ts"
        },
        bundle: true,
        platform: "browser",
        format: "esm",
        conditions,
        write: false,
        metafile: true,
        logLevel: "silent"
      })
      const inputs = Object.keys(result.metafile.inputs)
      expect(inputs.filter((p) => p.startsWith("node:"))).toEqual([])
      expect(result.outputFiles[0].text).not.toMatch(/from\s*["']node:|require\(["']node:/)
      expect(inputs.some((p) => /runtime\.browser\.(ts|js)$/.test(p))).toBe(true)
      expect(inputs.some((p) => /NodeClusterCodec|nodeKernels|workerPool\.(ts|js)$/.test(p))).toBe(false)
    })
  }
})
