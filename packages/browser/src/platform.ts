/**
 * The browser platform of the Promise API: http(s) URLs (Range requests,
 * read only), IndexedDB stores (`idb://DATABASE/NAME`) and picked files
 * (Blobs, read only); the codec, ciphers and compression pool are the
 * portable ones `@qcow2/compress/runtime` and `@qcow2/crypto/runtime`
 * resolve to under the `browser` condition (pako + zstd wasm, noble, Web
 * Workers). Every public function opens through a policy-checking opener
 * (opener.ts) made for the call.
 */
import { makeRunner, type Platform } from "@qcow2/promise"
import { kindOf, makeAppOpener, OpenPolicy } from "./opener.js"

/** Names the platform opens without a call's own opener: none (every call brings its policy). */
const refuseAll = new OpenPolicy()

export const browserPlatform: Platform = {
  opener: makeAppOpener({ picked: new Map(), policy: refuseAll }),
  readOnlyByDefault: (name) => kindOf(name) !== "idb",
  allocatedBytes: () => Promise.resolve(undefined),
  targetProblem: (name) => (kindOf(name) === "idb" ? undefined : `the target must be an IndexedDB image (idb://DATABASE/NAME), not ${name}`)
}

/** The page's (or worker's) runner, built on first use. */
export const runner = makeRunner(browserPlatform)
