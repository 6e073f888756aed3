/**
 * What `import.meta.url` means inside dist/qcow2.cjs, a CommonJS bundle
 * with no import.meta: the bundle's own file. build.mjs defines the one as
 * the other and injects this module, for the modules that resolve a
 * package from where they live (@qcow2/native finding koffi).
 */
export const bundleUrl: string = (require("node:url") as typeof import("node:url")).pathToFileURL(__filename).href
