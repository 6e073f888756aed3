/**
 * The breakpoints of QEMU's blkdebug filter (block/blkdebug.c suspend
 * rules, which qemu-io's `break`, `wait_break`, `resume` and
 * `remove_break` drive), written from what qemu-io 7.2 does:
 *
 * - `break EVENT TAG` adds a one-shot rule at the head of EVENT's list.
 *   The next request that raises EVENT on the node takes every such rule
 *   (each prints "blkdebug: Suspended request 'TAG'") and is held until
 *   each of its suspensions has been resumed.
 * - `resume TAG` resumes the most recent suspension tagged TAG, printing
 *   "blkdebug: Resuming request 'TAG'" before the request goes on.
 * - `remove_break TAG` drops the rules tagged TAG that have not fired and
 *   resumes every suspension tagged TAG; it fails (ENOENT) when there was
 *   no rule to drop, even if it resumed a request.
 *
 * A request is held where the format driver yields `reach(event)` (see
 * BlockStorageShape.debugBreak, `debugPoint`); the engine yields it
 * wherever it raises an event for a request on the image's own file.
 */
import { Deferred, Effect } from "effect"
import { type DebugEvent, isDebugEvent } from "../debug-events.js"

/** The breakpoints of one blkdebug node, for the commands that drive them and for the requests that reach them. */
export interface BlkdebugBreakpoints {
  /** `break EVENT TAG`; false when EVENT is not one of QEMU's event names (ENOENT). */
  readonly set: (event: string, tag: string) => boolean
  /** `remove_break TAG`; false when no rule tagged TAG was left to drop (ENOENT). */
  readonly remove: (tag: string) => boolean
  /** `resume TAG`; false when no request is suspended as TAG (ENOENT). */
  readonly resume: (tag: string) => boolean
  /** Drops every rule and resumes every suspended request (the node is closing). */
  readonly clear: () => void
  /** Whether a request is suspended as TAG. */
  readonly isSuspended: (tag: string) => boolean
  /** How many requests are held now (a request suspended by several rules counts once). */
  readonly held: () => number
  /** Completes at the next suspension. */
  readonly nextSuspension: Effect.Effect<void>
  /** The suspension point of a request raising `event`: holds it while a breakpoint on `event` has it suspended. */
  readonly reach: (event: DebugEvent) => Effect.Effect<void>
}

interface Suspension {
  readonly tag: string
  /** The request held (one per `reach` that suspended). */
  readonly request: number
  readonly resumed: Deferred.Deferred<void>
}

/** Breakpoints with none set; `report` prints blkdebug's lines (QEMU prints them on stdout). */
export const makeBlkdebugBreakpoints = (report: (line: string) => void): BlkdebugBreakpoints => {
  /** Rules not yet fired, most recent first (QEMU inserts at the list head). */
  let rules: Array<{ readonly event: DebugEvent; readonly tag: string }> = []
  /** Suspended requests, most recent first. */
  let suspended: Suspension[] = []
  /** Waiters of `nextSuspension`. */
  const watchers = new Set<() => void>()
  let requests = 0

  const resumeOne = (entry: Suspension): void => {
    report(`blkdebug: Resuming request '${entry.tag}'\n`)
    suspended = suspended.filter((s) => s !== entry)
    Deferred.doneUnsafe(entry.resumed, Effect.void)
  }

  const isSuspended = (tag: string): boolean => suspended.some((s) => s.tag === tag)

  return {
    set: (event, tag) => {
      if (!isDebugEvent(event)) return false
      rules = [{ event, tag }, ...rules]
      return true
    },
    remove: (tag) => {
      const before = rules.length
      rules = rules.filter((r) => r.tag !== tag)
      for (const entry of suspended.filter((s) => s.tag === tag)) resumeOne(entry)
      return rules.length < before
    },
    resume: (tag) => {
      const entry = suspended.find((s) => s.tag === tag)
      if (entry === undefined) return false
      resumeOne(entry)
      return true
    },
    clear: () => {
      rules = []
      for (const entry of suspended) resumeOne(entry)
    },
    isSuspended,
    held: () => new Set(suspended.map((s) => s.request)).size,
    nextSuspension: Effect.callback<void>((resume) => {
      const wake = (): void => resume(Effect.void)
      watchers.add(wake)
      return Effect.sync(() => void watchers.delete(wake))
    }),
    reach: (event) =>
      Effect.suspend(() => {
        const fired = rules.filter((r) => r.event === event)
        if (fired.length === 0) return Effect.void
        rules = rules.filter((r) => r.event !== event)
        const request = ++requests
        const mine = fired.map((r): Suspension => ({ tag: r.tag, request, resumed: Deferred.makeUnsafe<void>() }))
        for (const entry of mine) {
          suspended = [entry, ...suspended]
          report(`blkdebug: Suspended request '${entry.tag}'\n`)
        }
        const woken = [...watchers]
        watchers.clear()
        for (const wake of woken) wake()
        return Effect.forEach(mine, (entry) => Deferred.await(entry.resumed), { discard: true })
      })
  }
}
