#!/usr/bin/env node
/**
 * The `qcow2` executable (dist/qcow2.mjs). The CLI itself is one CommonJS
 * bundle, dist/qcow2.cjs, whose modules are evaluated on first use (esbuild
 * turns every dynamic import into a lazy require): effect/cli, the command
 * modules, the HTTP backend, node:crypto and the compression pool cost
 * nothing until a command needs them.
 *
 * Node 20 has no module compile cache, so this entry compiles the bundle
 * with node:vm and a V8 code cache, one per subcommand, written after the
 * first run of that subcommand into dist/cache/ (when that directory is
 * writable; otherwise the CLI simply runs without one). Compiling the
 * bundle from source costs ~60 ms of every start; loading the cache a
 * fraction of that. A cache from another build or Node version is never
 * used: both are part of its name, and V8 rejects a mismatching one anyway.
 *
 * Built twice (build.mjs): dist/bin/qcow2.cjs, the package's executable,
 * is CommonJS, because a main module that is an ES module loads Node's ES
 * module loader first, ~15 ms of each start (`qcow2 info`: 80 against
 * 95 ms); dist/qcow2.mjs, the same program as an ES module, stays for
 * whoever runs that path.
 */
import { createRequire } from "node:module"
import { COMMANDS } from "./cli/spec.js"

/**
 * Node's built-in modules through `require`, not `import`: an ES module
 * namespace of a built-in reads every export once, and node:fs's lazy
 * ones (ReadStream, …) load node:stream and its kin, ~3 ms of each start.
 */
/** Which build this is, set by build.mjs: the CommonJS executable in dist/bin/, or the ES module in dist/. */
declare const QCOW2_ENTRY_FORMAT: "cjs" | "esm"

const entryFile: string =
  QCOW2_ENTRY_FORMAT === "cjs" ? __filename : (createRequire(import.meta.url)("node:url") as typeof import("node:url")).fileURLToPath(import.meta.url)
const require = createRequire(entryFile)
const fs = require("node:fs") as typeof import("node:fs")
const path = require("node:path") as typeof import("node:path")
const vm = require("node:vm") as typeof import("node:vm")

/** Content hash of dist/qcow2.cjs, set by build.mjs. */
declare const QCOW2_BUNDLE_HASH: string

/** dist/, which holds the bundle and the cache directory. */
const dir = QCOW2_ENTRY_FORMAT === "cjs" ? path.dirname(path.dirname(entryFile)) : path.dirname(entryFile)
const bundle = path.join(dir, "qcow2.cjs")
const command = process.argv[2]
/** Run as qemu-io (see progname.ts), every command line is qemu-io's. */
const invokedAsQemuIo = [process.argv[1], process.argv0].some((w) => w !== undefined && path.basename(w).replace(/\.(?:mjs|cjs|js)$/, "") === "qemu-io")
const key = invokedAsQemuIo || command === "io" ? "io" : command !== undefined && Object.hasOwn(COMMANDS, command) ? command : "other"

/**
 * Commands that copy or compare whole images run their hot code for about
 * a second per GiB: V8's optimizing compiler (TurboFan) spent ~25% of the
 * process's CPU time compiling it on its background threads (convert or
 * compare of the 1 GiB mixed image: ~200 ms, against ~100 ms it saved on
 * the main thread), and the 8 GiB image converted with less CPU time too.
 * The baseline compiler (Sparkplug) still runs; zlib (native) and zstd
 * (wasm; convert -c zstd took less CPU time too) are not JavaScript. The
 * one loser is the TypeScript zstd decoder, used where the wasm cannot be
 * instantiated (an address-space limit): ~2x slower there.
 * Set before the bundle is compiled; the flag is part of the code cache's
 * key, and each command has its own cache.
 */
const WITHOUT_TURBOFAN = new Set(["convert", "compare"])
/**
 * Except when the command line names a secret (`--object secret,…`, a
 * `key-secret=` option, `--passphrase-file`), which every encrypted image
 * needs: sector encryption whitens each 16-byte block in JavaScript (XTS,
 * packages/crypto modes.ts), and that loop wants TurboFan. Converting a
 * 256 MiB LUKS qcow2 image to raw took 6.7 s without it and 1.0 s with it
 * (qemu-img: 0.64 s).
 */
const namesSecret = process.argv.some(
  (a) => a === "--object" || a.startsWith("--object=") || a === "--passphrase-file" || a.startsWith("--passphrase-file=") || a.includes("key-secret=")
)
const withoutTurbofan = WITHOUT_TURBOFAN.has(key) && !namesSecret
const v8 = require("node:v8") as typeof import("node:v8")
if (withoutTurbofan) v8.setFlagsFromString("--no-opt")
/**
 * The same whole-image commands keep V8's young generation at its initial
 * 1 MiB semi-spaces (it otherwise grows to 16 MiB as data streams through)
 * and ask V8 to favour size (old-generation limits grow in smaller steps).
 * Peak memory of `convert -c` (1 GiB mixed raw, zstd): 79 → 66 MiB; plain
 * convert raw→qcow2 68 → 64 MiB; no change in wall or CPU time that stood
 * out from this machine's noise. Both flags are read by the collector as
 * it runs, so setting them here takes effect.
 */
if (WITHOUT_TURBOFAN.has(key)) {
  v8.setFlagsFromString("--semi-space-growth-factor=1")
  v8.setFlagsFromString("--optimize-for-size")
}
// The flag is part of a code cache's key: a command run both ways has a cache for each.
const cacheName = WITHOUT_TURBOFAN.has(key) && !withoutTurbofan ? `${key}-turbofan` : key
const cacheFile = path.join(dir, "cache", `${QCOW2_BUNDLE_HASH}-${process.version}-${cacheName}.v8`)

const readCache = (): Buffer | undefined => {
  try {
    return fs.readFileSync(cacheFile)
  } catch {
    return undefined
  }
}

const cached = readCache()
// The bundle is ASCII (build.mjs: charset "ascii"), so read as Latin-1: the same string, without UTF-8 decoding.
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${fs.readFileSync(bundle, "latin1")}\n})`, {
  filename: bundle,
  ...(cached !== undefined ? { cachedData: cached } : {})
})

if (cached === undefined || script.cachedDataRejected === true) {
  // After the run, so the cache also holds the functions the command compiled.
  process.once("exit", () => {
    try {
      const data = script.createCachedData()
      fs.mkdirSync(path.dirname(cacheFile), { recursive: true })
      const temporary = `${cacheFile}.${process.pid}.tmp`
      fs.writeFileSync(temporary, data)
      fs.renameSync(temporary, cacheFile)
    } catch {
      // A read-only installation: run without a cache.
    }
  })
}

/**
 * effect's Utils module decides at load how to mark its internal calls by
 * formatting the stack of an Error it creates, unless stack traces are
 * off: V8 then collects source positions for the bundle's functions that
 * came from the code cache, ~2 ms of each start. With the limit at 0 it
 * takes its other marker (a try/finally around each continuation), which
 * works on every engine; the limit is back before any command code runs.
 * Not for the commands that run without TurboFan: there the other marker
 * runs in baseline code on every continuation of a long job.
 */
const stackTraceLimit = Error.stackTraceLimit
if (!withoutTurbofan) Error.stackTraceLimit = 0
const module = { exports: {} }
try {
  ;(script.runInThisContext() as (...args: unknown[]) => void)(module.exports, createRequire(bundle), module, bundle, dir)
} finally {
  Error.stackTraceLimit = stackTraceLimit
}
