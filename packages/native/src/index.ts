/**
 * koffi, the foreign-function package through which the Node backends call
 * what Node has no binding for (libc's fcntl locks, lseek SEEK_DATA,
 * preadv2 RWF_NOWAIT, fallocate; libzstd), loaded once per process.
 *
 * Every command that opens an image takes its lock through koffi, so its
 * load is part of each start. `require("koffi")` costs ~15 ms: Node's
 * package resolution, koffi's loader (which reads the ELF header of the
 * node binary to tell glibc from musl) and its platform package's, then
 * the native addon. koffi's own loader looks for the addon in the platform
 * package next to it (`<koffi>/../@koromix/koffi-<platform>-<arch>/`);
 * this module opens it there directly (~4 ms with the resolution) when its
 * version is koffi's, and otherwise, or when that fails (musl, another
 * layout), falls back to `require("koffi")`.
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"

/** A C function bound by koffi: a size_t result above 2^53 comes back as a bigint. */
export type NativeFunction = ((...args: ReadonlyArray<unknown>) => number | bigint) & {
  /** koffi's asynchronous form: the call runs on libuv's thread pool, the callback (last argument) on the calling thread. */
  readonly async: (...args: ReadonlyArray<unknown>) => void
}

/** A shared library opened by koffi. */
export interface NativeLibrary {
  /** Binds a function from its C declaration, e.g. `"int fcntl(int fd, int cmd, ...)"`. */
  readonly func: (declaration: string) => NativeFunction
}

/** What the toolkit uses of koffi. */
export interface Koffi {
  /** Opens a shared library by file name, e.g. `"libc.so.6"`. */
  readonly load: (library: string) => NativeLibrary
  /** errno as the last bound call on this thread left it. */
  readonly errno: () => number
  /** The address of a typed array's first byte (its backing store does not move). */
  readonly address: (value: Uint8Array) => bigint
}

/** Whether a value has the functions used here (an addon of another version might not). */
const isKoffi = (value: unknown): value is Koffi =>
  typeof value === "object" &&
  value !== null &&
  typeof (value as Partial<Koffi>).load === "function" &&
  typeof (value as Partial<Koffi>).errno === "function" &&
  typeof (value as Partial<Koffi>).address === "function"

/** The native addon of koffi's platform package for this process (glibc build), or undefined. */
const openAddon = (require: NodeJS.Require): Koffi | undefined => {
  try {
    const root = path.dirname(require.resolve("koffi"))
    const version = (JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { version?: unknown }).version
    const file = path.join(root, "..", "@koromix", `koffi-${process.platform}-${process.arch}`, `${process.platform}_${process.arch}`, "koffi.node")
    const addon = { exports: {} as { version?: unknown } }
    process.dlopen(addon, file)
    return addon.exports.version === version && isKoffi(addon.exports) ? addon.exports : undefined
  } catch {
    return undefined
  }
}

/**
 * koffi as `require` from `from` (a file URL or path) finds it: its
 * platform package's addon when that loads and is of koffi's version, else
 * `require("koffi")`; undefined when neither gives a usable module. Each
 * call loads anew; `koffi()` is the process's, loaded once.
 */
export const loadKoffi = (from: string): Koffi | undefined => {
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) return undefined
  const require = createRequire(from)
  const direct = openAddon(require)
  if (direct !== undefined) return direct
  try {
    const imported = require("koffi") as { readonly default?: unknown }
    const module = imported.default ?? imported
    return isKoffi(module) ? module : undefined
  } catch {
    return undefined
  }
}

let loaded: { readonly koffi: Koffi | undefined } | undefined

/**
 * The process's koffi, loaded on first use; undefined where it cannot be
 * had (not Linux on x64/arm64, koffi not installed), and each caller then
 * does without the call, as QEMU does on a system without it.
 */
export const koffi = (): Koffi | undefined => (loaded ??= { koffi: loadKoffi(import.meta.url) }).koffi
