/**
 * Bundles the CLI with esbuild:
 * - dist/qcow2.cjs: the whole CLI as one minified CommonJS bundle. Dynamic
 *   imports become lazy requires, so code a command does not use is never
 *   evaluated (effect/cli for help and errors, the other commands, the
 *   compression pool, the HTTP backend, node:crypto).
 * - dist/bin/qcow2.cjs: the executable (src/entry.ts), which runs the
 *   bundle with a V8 code cache kept in dist/cache/; dist/qcow2.mjs, the
 *   same as an ES module (slower to start: Node's ES module loader).
 * - dist/bin/qemu-img.cjs, dist/bin/qemu-io.cjs (and .mjs in dist/): the
 *   same executable under QEMU's program names, for machines without QEMU:
 *   run by those names, the CLI is qemu-img / qemu-io (src/progname.ts).
 *
 * Our sources import effect's modules through its index (`import { Effect,
 * Layer } from "effect"`). In the bundle, evaluating that index evaluates
 * every module it names (Schema, Stream, Cron, …), ~15 ms of each start:
 * esbuild keeps a module whole once lazily loaded code shares it. The
 * `effectModules` plugin rewrites such imports to the modules themselves
 * (`import * as Effect from "effect/Effect"`, the same namespace object),
 * so only the modules in use are evaluated, and only when first needed.
 */
import { build } from "esbuild"
import { createHash } from "node:crypto"
import * as fs from "node:fs"

/** What effect's index exports from effect/Function by name; every other name is a module namespace. */
const FUNCTION_EXPORTS = new Set(["absurd", "cast", "flow", "hole", "identity", "pipe"])

/** One `import { … } from "effect"` as imports of the modules it names, on as many lines (the source map stays right). */
const importModules = (statement, specifiers) => {
  const imports = []
  for (const specifier of specifiers.split(",").map((s) => s.trim())) {
    if (specifier === "" || specifier.startsWith("type ")) continue
    const [name, local = name] = specifier.split(/\s+as\s+/)
    imports.push(FUNCTION_EXPORTS.has(name) ? `import { ${name} as ${local} } from "effect/Function";` : `import * as ${local} from "effect/${name}";`)
  }
  return imports.join(" ") + "\n".repeat(statement.split("\n").length - 1)
}

const effectModules = {
  name: "effect-modules",
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, async (args) => {
      if (args.path.includes("/node_modules/")) return undefined
      const source = await fs.promises.readFile(args.path, "utf8")
      const contents = source.replace(/^import \{([^}]*)\} from "effect"$/gm, importModules)
      return { contents, loader: "ts" }
    })
  }
}

/**
 * Effect gives each fiber that suspends a node:async_hooks AsyncResource and
 * resumes it inside that resource, so an AsyncLocalStorage value set around
 * a run is still there after each await. The CLI has no such storage, and
 * the resource costs every suspension an allocation, an async id and a
 * push and pop of the async context: without it, `convert` of the 1 GiB
 * mixed qcow2 to qcow2 took ~4% less wall time (median of 5, 0.64 against
 * 0.67 s) and `compare` with its raw source ~2%.
 * The bundle leaves it out; the library packages keep effect as it is. The
 * build fails if effect no longer has the line, rather than silently
 * keeping the cost.
 */
const ASYNC_RESOURCE_LOOKUP = 'return globalThis.process?.getBuiltinModule?.("node:async_hooks")?.AsyncResource;'
const effectWithoutAsyncContext = {
  name: "effect-without-async-context",
  setup(b) {
    b.onLoad({ filter: /[\\/]effect[\\/]dist[\\/]internal[\\/]effect\.js$/ }, async (args) => {
      const source = await fs.promises.readFile(args.path, "utf8")
      if (!source.includes(ASYNC_RESOURCE_LOOKUP)) throw new Error(`${args.path}: effect's AsyncResource lookup changed; update build.mjs`)
      return { contents: source.replace(ASYNC_RESOURCE_LOOKUP, "return undefined;"), loader: "js", resolveDir: args.path.slice(0, args.path.lastIndexOf("/")) }
    })
  }
}

fs.rmSync("dist", { recursive: true, force: true })

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  conditions: ["@qcow2/source"],
  minify: true,
  charset: "ascii",
  legalComments: "none",
  logLevel: "warning",
  // koffi (fcntl for image locking) finds its native binary next to its own
  // files, so it stays a runtime require, resolved from node_modules.
  external: ["koffi"]
}

await build({
  ...common,
  entryPoints: ["src/main.ts"],
  format: "cjs",
  outfile: "dist/qcow2.cjs",
  supported: { "dynamic-import": false },
  sourcemap: "linked",
  plugins: [effectModules, effectWithoutAsyncContext],
  // A module that resolves a package from where it lives (@qcow2/native:
  // koffi) does so with createRequire(import.meta.url); in the bundle that
  // place is the bundle's own file.
  define: { "import.meta.url": "bundleUrl" },
  inject: ["src/bundle-url.ts"]
})

const bundleBytes = fs.readFileSync("dist/qcow2.cjs")
// entry.ts reads the bundle as Latin-1, which is only the same string for ASCII.
if (bundleBytes.some((b) => b > 0x7f)) throw new Error("dist/qcow2.cjs is not ASCII")
const hash = createHash("sha256").update(bundleBytes).digest("hex").slice(0, 16)

// The executable, twice (see src/entry.ts): CommonJS in dist/bin/ (the
// package's bin, and what ./qcow2 runs), an ES module in dist/.
for (const [format, outfile] of [["cjs", "dist/bin/qcow2.cjs"], ["esm", "dist/qcow2.mjs"]]) {
  await build({
    ...common,
    entryPoints: ["src/entry.ts"],
    format,
    outfile,
    define: { QCOW2_BUNDLE_HASH: JSON.stringify(hash), QCOW2_ENTRY_FORMAT: JSON.stringify(format) },
    // Each build drops the other's branch; import.meta is only read in the ES module's.
    logOverride: { "empty-import-meta": "silent" }
  })
  const extension = format === "cjs" ? "cjs" : "mjs"
  for (const name of ["qemu-img", "qemu-io"]) {
    const copy = `${outfile.slice(0, outfile.lastIndexOf("/"))}/${name}.${extension}`
    fs.copyFileSync(outfile, copy)
    fs.chmodSync(copy, 0o755)
  }
}
