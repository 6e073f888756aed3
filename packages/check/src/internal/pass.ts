import type { Imrt } from "./imrt.js"
import type { Io } from "./io.js"
import type { MetadataGuard } from "./metadata.js"
import type { StoredRefcounts } from "./stored.js"
import type { ImageInfo, Tally } from "./state.js"

/** What a check may repair (QEMU's BdrvCheckMode bits). */
export interface Fix {
  readonly leaks: boolean
  readonly errors: boolean
}

export const NO_FIX: Fix = { leaks: false, errors: false }

/** The state of one run of the refcount check (one call of QEMU's qcow2_check_refcounts). */
export interface Pass {
  readonly io: Io
  readonly img: ImageInfo
  readonly log: (message: string) => void
  readonly imrt: Imrt
  readonly stored: StoredRefcounts
  readonly metadata: MetadataGuard
  /** Refcount counters; replaced wholesale where QEMU saves and restores its result. */
  tally: Tally
  /** The refcount structure is broken beyond per-cluster fixes. */
  rebuild: boolean
}
