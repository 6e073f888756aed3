/**
 * Packing the workspace's publishable packages with `pnpm pack` (which
 * applies each package's `publishConfig`) and installing the tarballs with
 * npm into a fresh project outside the workspace, as a user would.
 */
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { join, relative, resolve } from "node:path"

export const workspaceRoot = resolve(import.meta.dirname, "../../..")

export interface Manifest {
  readonly name: string
  readonly version: string
  readonly private?: boolean
  readonly description?: string
  readonly license?: string
  readonly author?: string
  readonly repository?: { readonly type: string; readonly url: string; readonly directory?: string }
  readonly keywords?: readonly string[]
  readonly engines?: Record<string, string>
  readonly sideEffects?: boolean
  readonly exports?: Record<string, ExportTarget>
  readonly bin?: Record<string, string>
  readonly files?: readonly string[]
  readonly dependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly peerDependenciesMeta?: Record<string, { readonly optional?: boolean }>
}

/** An `exports` entry: a path, or conditions (types, browser, node, default, …) mapping to entries. */
export type ExportTarget = string | { readonly [condition: string]: ExportTarget }

/** Every path an `exports` entry can resolve to, under any condition. */
export const exportPaths = (target: ExportTarget): string[] => (typeof target === "string" ? [target] : Object.values(target).flatMap(exportPaths))

/** An `exports` map without the workspace's dev-time `@qcow2/source` condition (what the published one must equal). */
export const withoutSourceCondition = (target: ExportTarget): ExportTarget =>
  typeof target === "string" ? target : Object.fromEntries(Object.entries(target).filter(([condition]) => condition !== "@qcow2/source").map(([condition, inner]) => [condition, withoutSourceCondition(inner)]))

export const readManifest = (dir: string): Manifest => JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as Manifest

/** The workspace directories (relative to the root) of every package that is not private. */
export const publishableDirs = (): string[] =>
  ["packages", "apps"]
    .flatMap((parent) => readdirSync(join(workspaceRoot, parent)).map((name) => `${parent}/${name}`))
    .filter((dir) => {
      try {
        return readManifest(join(workspaceRoot, dir)).private !== true
      } catch {
        return false
      }
    })
    .sort()

/**
 * The environment for npm and pnpm run from a test: without the variables
 * `pnpm run` sets for the workspace (they would configure the child for it),
 * keeping the registry and cache settings a machine may have.
 */
export const toolEnv = (): NodeJS.ProcessEnv => {
  const keep = new Set(["npm_config_registry", "npm_config_cache", "npm_config_userconfig"])
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => keep.has(key.toLowerCase()) || !/^(npm|pnpm)_/i.test(key)))
}

/** `pnpm pack` of one workspace package into `destination`; returns the tarball's path. */
export const pack = (dir: string, destination: string): string => {
  const out = execFileSync("pnpm", ["pack", "--pack-destination", destination], { cwd: join(workspaceRoot, dir), env: toolEnv(), encoding: "utf8" })
  const tarball = out.trim().split("\n").at(-1)!.trim()
  statSync(tarball)
  return tarball
}

/** The version of a package the workspace has installed (to pin the consumer's to it). */
export const workspaceVersion = (name: string): string =>
  (JSON.parse(readFileSync(createRequire(join(workspaceRoot, "package.json")).resolve(`${name}/package.json`), "utf8")) as { version: string }).version

/**
 * Writes the consumer project's package.json (the tarballs, plus effect and
 * @types/node pinned to the workspace's versions) and runs `npm install`.
 */
export const installConsumer = (project: string, tarballs: ReadonlyMap<string, string>): void => {
  const dependencies: Record<string, string> = {
    effect: workspaceVersion("effect"),
    "@types/node": workspaceVersion("@types/node")
  }
  for (const [name, tarball] of tarballs) dependencies[name] = `file:${tarball}`
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "qcow2-consumer", private: true, type: "module", dependencies }, null, 2))
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"], { cwd: project, env: toolEnv(), stdio: ["ignore", "ignore", "inherit"] })
}

/** Every file under `dir`, relative to it. */
export const listFiles = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort()

const importPatterns = [/\bfrom\s*["']([^"'.][^"']*)["']/g, /\bimport\s*\(\s*["']([^"'.][^"']*)["']\s*\)/g, /\brequire\s*\(\s*["']([^"'.][^"']*)["']\s*\)/g, /^\s*import\s*["']([^"'.][^"']*)["']/gm]

/** The package each bare import of a .js or .d.ts file names (`@scope/name` or `name`), except node: built-ins. */
export const importedPackages = (source: string): Set<string> => {
  const names = new Set<string>()
  for (const pattern of importPatterns) {
    for (const match of source.matchAll(pattern)) {
      const specifier = match[1]!
      if (specifier.startsWith("node:")) continue
      const parts = specifier.split("/")
      names.add(specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!)
    }
  }
  return names
}
