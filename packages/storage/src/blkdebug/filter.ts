/**
 * QEMU's blkdebug filter as a BlockStorage wrapper: the format driver above
 * raises named events on it (`debugEvent`), rules turn an event into
 * failures of the requests that follow, or into a state change that other
 * rules wait for. Written from block/blkdebug.c's documented behaviour:
 *
 * - Events: the rules for the event whose state matches the current state
 *   (0 = any) run, most recently given first. The first inject-error rule
 *   of an event replaces the active set; each one becomes the first active
 *   rule. A set-state rule sets the state the node has after the event.
 * - Requests: the first active rule whose kinds include the request's and
 *   whose byte (if any) the request covers fails it with its errno; a
 *   `once` rule is then gone for good. Other rules stay active until a
 *   later event replaces the set.
 * - Flushes: as QEMU's block layer does for every node, a flush with no
 *   write, discard or resize since the last successful flush does not reach
 *   the node (so it cannot fail); a failed request still counts as a write.
 */
import { Effect } from "effect"
import type { BlockStorageShape } from "../BlockStorage.js"
import type { DebugEvent } from "../debug-events.js"
import { StorageError, type StorageErrorReason } from "../errors.js"
import type { BlkdebugBreakpoints } from "./breakpoints.js"
import type { BlkdebugConfig, BlkdebugIoType, BlkdebugRule, InjectErrorRule } from "./rules.js"

/** Linux errno numbers by name, for the failures the rules inject. */
const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  22: "EINVAL",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  34: "ERANGE",
  95: "ENOTSUP",
  122: "EDQUOT"
}

const reasonOf = (errno: number): StorageErrorReason => (errno === 28 || errno === 122 ? "NoSpace" : errno === 30 ? "ReadOnly" : "Io")

/** The failure a rule injects into a request. */
const injected = (rule: InjectErrorRule, location: string, operation: BlkdebugIoType, offset: number, length: number): StorageError => {
  const errno = ERRNO_NAMES[rule.errno] ?? `errno ${rule.errno}`
  return new StorageError({
    reason: reasonOf(rule.errno),
    message: `blkdebug: ${errno} injected into ${operation} (event ${rule.event})`,
    location,
    errno,
    ...(operation === "flush" ? {} : { offset, length })
  })
}

/** The rules of one blkdebug node at work: events change what is active, `check` finds the failure of a request. */
export interface BlkdebugRules {
  /** Raises `event` on the node. */
  readonly debugEvent: (event: DebugEvent) => void
  /** The failure an active rule injects into this request, if any (a `once` rule is then gone). */
  readonly check: (operation: BlkdebugIoType, offset: number, length: number) => StorageError | undefined
}

/** `config`'s rules in state 1, failing requests of the node at `location`. */
export const makeBlkdebugRules = (config: BlkdebugConfig, location: string): BlkdebugRules => {
  let state = 1
  /** Rules by event, most recently given first (QEMU inserts at the list head). */
  const byEvent = new Map<DebugEvent, BlkdebugRule[]>()
  for (const rule of config.rules) byEvent.set(rule.event, [rule, ...(byEvent.get(rule.event) ?? [])])
  /** Rules failing requests now, first match wins. */
  let active: InjectErrorRule[] = []

  const debugEvent = (event: DebugEvent): void => {
    let newState = state
    let injectedHere = 0
    for (const rule of byEvent.get(event) ?? []) {
      if (rule.state !== 0 && rule.state !== state) continue
      switch (rule.action) {
        case "inject-error":
          if (injectedHere++ === 0) active = []
          active.unshift(rule)
          break
        case "set-state":
          newState = rule.newState
          break
      }
    }
    state = newState
  }

  /** The failure for this request, if an active rule matches (a `once` rule is removed). */
  const check = (operation: BlkdebugIoType, offset: number, length: number): StorageError | undefined => {
    const rule = active.find(
      (r) => r.ioTypes.includes(operation) && (r.offset === undefined || (length > 0 && r.offset >= offset && r.offset < offset + length))
    )
    if (rule === undefined || rule.errno === 0) return undefined
    if (rule.once) {
      active = active.filter((r) => r !== rule)
      const list = byEvent.get(rule.event) ?? []
      byEvent.set(
        rule.event,
        list.filter((r) => r !== rule)
      )
    }
    return injected(rule, location, operation, offset, length)
  }
  return { debugEvent, check }
}

/**
 * Wraps `inner` in a blkdebug node with `config`'s rules, in state 1, and
 * `breakpoints` (qemu-io's `break`) when given: they hold the requests
 * that reach them. The wrapper passes everything else (size, locks,
 * allocated size) through.
 */
export const makeBlkdebugStorage = (inner: BlockStorageShape, config: BlkdebugConfig, breakpoints?: BlkdebugBreakpoints): BlockStorageShape => {
  const { debugEvent, check } = makeBlkdebugRules(config, inner.location)
  let writeGeneration = 0
  let flushedGeneration = 0

  /** A request that changes the store: checked, then passed on; counted either way. */
  const changing = <A>(operation: BlkdebugIoType, offset: number, length: number, run: () => Effect.Effect<A, StorageError>) =>
    Effect.suspend(() => {
      const failure = check(operation, offset, length)
      return Effect.ensuring(failure !== undefined ? Effect.fail(failure) : run(), Effect.sync(() => void writeGeneration++))
    })

  return {
    location: inner.location,
    capabilities: inner.capabilities,
    read: (offset, into) =>
      Effect.suspend(() => {
        const failure = check("read", offset, into.length)
        return failure !== undefined ? Effect.fail(failure) : inner.read(offset, into)
      }),
    write: (offset, data) => changing("write", offset, data.length, () => inner.write(offset, data)),
    discard: (offset, length) => changing("discard", offset, length, () => inner.discard(offset, length)),
    resize: (size) => changing("write", size, 0, () => inner.resize(size)),
    flush: () =>
      Effect.suspend(() => {
        const generation = writeGeneration
        if (generation === flushedGeneration) return Effect.void
        const failure = check("flush", 0, 0)
        if (failure !== undefined) return Effect.fail(failure)
        return Effect.tap(inner.flush(), () => Effect.sync(() => void (flushedGeneration = generation)))
      }),
    size: () => inner.size(),
    ...(inner.allocatedSize !== undefined ? { allocatedSize: inner.allocatedSize } : {}),
    ...(inner.lock !== undefined ? { lock: inner.lock } : {}),
    debugEvent,
    ...(breakpoints !== undefined ? { debugBreak: breakpoints.reach } : {})
  }
}
