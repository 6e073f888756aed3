import { Effect } from "effect"
import { StorageError } from "@qcow2/storage"
import type { StorageOpenerShape } from "@qcow2/storage"
import { makeBlobStorageOpener } from "@qcow2/storage-blob"
import { HttpStorageOpener, openHttp, type HttpBlockStorage } from "@qcow2/storage-http"
import { makeIdbStorageOpener, parseIdbName } from "@qcow2/storage-idb"

/** Names of files the user picked or dropped: `picked:NAME`. */
export const PICKED = "picked:"

/** The localStorage key of the names the user approved. */
const APPROVALS = "qcow2-web:approved"

/** Which store a name lives in. */
export type NameKind = "http" | "idb" | "picked" | "other"

export const kindOf = (name: string): NameKind =>
  /^https?:\/\//i.test(name) ? "http" : name.startsWith("idb://") ? "idb" : name.startsWith(PICKED) ? "picked" : "other"

/** Where a name may reach without asking: its origin, its database, or the picked files. */
const realmOf = (name: string): string | undefined => {
  switch (kindOf(name)) {
    case "http":
      try {
        return new URL(name).origin
      } catch {
        return undefined
      }
    case "idb":
      return `idb:${parseIdbName(name)?.database ?? ""}`
    case "picked":
      return "picked"
    case "other":
      return undefined
  }
}

/**
 * The opening policy. An image names its own backing file, and an untrusted
 * image must not make the app fetch arbitrary URLs or open other stored
 * images. A name may be opened when the user chose it (opened it, or
 * approved it in the UI), or when an image the policy let open names it
 * within the same realm: the same origin for a URL, the same IndexedDB
 * database, the same set of picked files.
 */
export class OpenPolicy {
  private readonly approved: Set<string>
  private readonly derived = new Set<string>()

  /** `remembered`: where approvals outlive the page (localStorage), so a stored overlay reopens without asking again. */
  constructor(private readonly remembered?: Pick<Storage, "getItem" | "setItem">) {
    let saved: unknown = []
    try {
      saved = JSON.parse(remembered?.getItem(APPROVALS) ?? "[]")
    } catch {
      saved = []
    }
    this.approved = new Set(Array.isArray(saved) ? saved.filter((n): n is string => typeof n === "string") : [])
  }

  approve(name: string): void {
    this.approved.add(name)
    this.remembered?.setItem(APPROVALS, JSON.stringify([...this.approved].filter((n) => kindOf(n) !== "picked")))
  }

  /** Records that `referencedFrom` names `resolved`; allowed when both share a realm. */
  note(referencedFrom: string, resolved: string): void {
    const from = realmOf(referencedFrom)
    if (from !== undefined && from === realmOf(resolved) && this.allows(referencedFrom)) this.derived.add(resolved)
  }

  allows(name: string): boolean {
    return this.approved.has(name) || this.derived.has(name)
  }

  /** Whether the policy alone (without asking) lets `referencedFrom` open `resolved`. */
  sameRealm(referencedFrom: string, resolved: string): boolean {
    const from = realmOf(referencedFrom)
    return from !== undefined && from === realmOf(resolved)
  }
}

export interface AppOpenerOptions {
  readonly picked: ReadonlyMap<string, Blob>
  readonly policy: OpenPolicy
  /** Every HTTP store opened, for the "requests made, bytes fetched" counters. */
  readonly onHttpStore?: (store: HttpBlockStorage) => void
}

/** One opener for every store the app knows, behind the opening policy. */
export const makeAppOpener = (options: AppOpenerOptions): StorageOpenerShape => {
  const http: StorageOpenerShape = {
    open: (name, open) =>
      open.readOnly ? Effect.tap(openHttp(name), (store) => Effect.sync(() => options.onHttpStore?.(store))) : HttpStorageOpener.make().open(name, open),
    resolve: HttpStorageOpener.resolve
  }
  const idb = makeIdbStorageOpener()
  const blob = makeBlobStorageOpener(new Map([...options.picked].map(([n, b]) => [`${PICKED}${n}`, b])))
  const inner = (name: string): StorageOpenerShape | undefined => {
    switch (kindOf(name)) {
      case "http":
        return http
      case "idb":
        return idb
      case "picked":
        return blob
      case "other":
        return undefined
    }
  }
  return {
    open: (name, open) => {
      if (!options.policy.allows(name)) {
        return Effect.fail(
          new StorageError({ reason: "PermissionDenied", message: "blocked by the opening policy (not approved)", location: name })
        )
      }
      const opener = inner(name)
      if (opener === undefined) {
        return Effect.fail(new StorageError({ reason: "NotFound", message: "no store of that kind", location: name }))
      }
      return opener.open(name, open)
    },
    resolve: (referencedFrom, name) => {
      const opener = inner(referencedFrom)
      const resolved =
        /^[a-z][a-z0-9+.-]*:\/\//i.test(name) || opener === undefined
          ? name
          : kindOf(referencedFrom) === "picked"
            ? `${PICKED}${name.slice(name.lastIndexOf("/") + 1)}`
            : opener.resolve(referencedFrom, name)
      options.policy.note(referencedFrom, resolved)
      return resolved
    }
  }
}
