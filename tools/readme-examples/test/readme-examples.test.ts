/**
 * Runs every runnable example of the READMEs (see markdown.ts for the
 * marks) against the workspace build, as a user's script would run: the
 * packages through their `dist` (the default export condition, no
 * TypeScript loader), the CLI as its bundle. Each example runs in a fresh
 * temporary directory and must exit 0 and, where the README shows its
 * output, print exactly that.
 *
 * TypeScript examples are type-checked first, all in one program, against
 * the packages' declaration files, then compiled with the TypeScript of
 * the root devDependencies (transpileModule) and run by node: READMEs show
 * the language users of these packages write, and a renamed export or a
 * changed signature fails here even where the example would still happen
 * to run. tsx is not a dependency and is not needed for that.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import ts from "typescript"
import { beforeAll, describe, expect, it } from "vitest"
import { runnableExamples, type Example } from "./markdown.js"

const ROOT = path.resolve(import.meta.dirname, "../../..")
const RUN_DIR = path.resolve(import.meta.dirname, "../.run")
const CLI_BUNDLE = path.join(ROOT, "apps/cli/dist/bin/qcow2.cjs")

const packageReadmes = fs
  .readdirSync(path.join(ROOT, "packages"))
  .map((name) => `packages/${name}/README.md`)
  .filter((file) => fs.existsSync(path.join(ROOT, file)))
const readmes = ["README.md", "apps/cli/README.md", ...packageReadmes]
const examples = readmes.flatMap((readme) => runnableExamples(readme, fs.readFileSync(path.join(ROOT, readme), "utf8")))

const nameOf = (e: Example): string => `${e.readme.replace(/\/?README\.md$/, "").replaceAll("/", "-") || "root"}-${e.line}`

/** Writes each TypeScript example to .run/ (where node_modules resolves every workspace package) and type-checks them together. */
const typeCheck = (tsExamples: ReadonlyArray<Example>): string[] => {
  const files = tsExamples.map((e) => {
    const file = path.join(RUN_DIR, `${nameOf(e)}.ts`)
    fs.writeFileSync(file, e.code)
    return file
  })
  const program = ts.createProgram(files, {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    lib: ["lib.es2022.d.ts", "lib.dom.d.ts"],
    types: ["node"],
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    isolatedModules: true,
    moduleDetection: ts.ModuleDetectionKind.Force
  })
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file !== undefined && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined
    const example = d.file !== undefined ? tsExamples[files.indexOf(path.resolve(d.file.fileName))] : undefined
    const place = example !== undefined && where !== undefined ? `${example.readme}:${example.line + 1 + where.line}` : (d.file?.fileName ?? "")
    return `${place}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`
  })
}

/** The program node runs for an example. */
const scriptOf = (e: Example): string => {
  const file = path.join(RUN_DIR, `${nameOf(e)}.mjs`)
  const code = e.language === "ts" ? ts.transpileModule(e.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText : e.code
  fs.writeFileSync(file, code)
  return file
}

/** A temporary directory with `qcow2` (and `./qcow2`) running the built CLI. */
const workDir = (): { dir: string; env: NodeJS.ProcessEnv } => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "readme-example-"))
  const bin = path.join(dir, ".bin")
  fs.mkdirSync(bin)
  const shim = `#!/bin/sh\nexec "${process.execPath}" "${CLI_BUNDLE}" "$@"\n`
  for (const file of [path.join(bin, "qcow2"), path.join(dir, "qcow2")]) fs.writeFileSync(file, shim, { mode: 0o755 })
  // Without node_modules/.bin (where a workspace package's bin could shadow qemu-img): the oracle is QEMU's.
  const searchPath = (process.env["PATH"] ?? "").split(":").filter((p) => !p.includes("node_modules"))
  return { dir, env: { ...process.env, PATH: [bin, ...searchPath].join(":") } }
}

const describeRun = (what: string, r: ReturnType<typeof spawnSync>): string =>
  `${what} exited ${r.status ?? r.signal}\n--- stdout\n${String(r.stdout)}\n--- stderr\n${String(r.stderr)}`

describe("README examples", () => {
  beforeAll(() => {
    fs.rmSync(RUN_DIR, { recursive: true, force: true })
    fs.mkdirSync(RUN_DIR, { recursive: true })
    // `pnpm test` builds everything first; a lone vitest run may not have.
    const missing = [CLI_BUNDLE, ...packageReadmes.map((r) => path.join(ROOT, path.dirname(r), "dist/index.js"))].filter((f) => !fs.existsSync(f))
    if (missing.length > 0) throw new Error(`not built (run pnpm build): ${missing.join(", ")}`)
  })

  it("every package README has a runnable example", () => {
    const without = packageReadmes.filter((readme) => !examples.some((e) => e.readme === readme))
    expect(without).toEqual([])
  })

  it("the TypeScript examples type-check against the packages' declarations", () => {
    expect(typeCheck(examples.filter((e) => e.language === "ts"))).toEqual([])
  })

  it.each(examples.map((e) => [`${e.readme}:${e.line}`, e] as const))("%s runs", (_, e) => {
    const { dir, env } = workDir()
    try {
      if (e.setup !== undefined) {
        const setup = spawnSync("bash", ["-euo", "pipefail", "-c", e.setup], { cwd: dir, env, encoding: "utf8" })
        expect(setup.status, describeRun(`setup ${e.setup}`, setup)).toBe(0)
      }
      const r =
        e.language === "sh"
          ? spawnSync("bash", ["-euo", "pipefail", "-c", e.code], { cwd: dir, env, encoding: "utf8", timeout: 120_000 })
          : spawnSync(process.execPath, [scriptOf(e)], { cwd: dir, env, encoding: "utf8", timeout: 120_000 })
      expect(r.status, describeRun("the example", r)).toBe(0)
      if (e.expectedOutput !== undefined) expect(r.stdout).toBe(e.expectedOutput)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
