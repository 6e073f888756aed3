import { Effect } from "effect"
import type { BlockStorageShape } from "../BlockStorage.js"
import { StorageError } from "../errors.js"

/** The operations a {@link FaultInjector} can fail. */
export type FaultOperation = "read" | "write" | "flush" | "size" | "resize" | "discard"

/** One call as a fault rule sees it. */
export interface FaultCall {
  readonly operation: FaultOperation
  /** 1-based count of calls of this operation since the injector was made (this one included). */
  readonly index: number
  /** Offset of read/write/discard, new size of resize. */
  readonly offset?: number
  /** Length of read/write/discard. */
  readonly length?: number
}

/** When to fail. Without `nth` and `when`, every call of `operation` matches. */
export interface FaultRule {
  readonly operation: FaultOperation
  /** Match the call with this `index` (1-based). */
  readonly nth?: number
  /** Match calls for which this returns true. */
  readonly when?: (call: FaultCall) => boolean
  /** How many matching calls fail before the rule is spent. Default 1 with `nth`, unlimited otherwise. */
  readonly times?: number
  /**
   * For a failing write: write this many leading bytes to the inner store
   * before failing, like a device that failed mid-request. Default 0.
   */
  readonly partialBytes?: number
}

/** A store wrapper that fails chosen operations (`makeFaultInjector`). */
export interface FaultInjector {
  /** The wrapped store; operations matching a rule fail with reason `Io`. */
  readonly storage: BlockStorageShape
  /** Fails every later call that matches `rule`. */
  readonly inject: (rule: FaultRule) => void
  /** Fail the `n`-th call (1-based, counted since the injector was made) of `operation`. */
  readonly failNth: (operation: FaultOperation, n: number) => void
  /** Fail the next call of `operation`. */
  readonly failNext: (operation: FaultOperation) => void
  /** Fail every call of `operation` for which `predicate` holds, until `clear`. */
  readonly failWhen: (operation: FaultOperation, predicate: (call: FaultCall) => boolean) => void
  /** Remove all rules. */
  readonly clear: () => void
  /** Calls of `operation` so far (failed ones included). */
  readonly calls: (operation: FaultOperation) => number
  /** Faults injected so far. */
  readonly injected: () => ReadonlyArray<FaultCall>
}

interface ActiveRule {
  readonly rule: FaultRule
  remaining: number
}

/**
 * Wraps `inner` to fail chosen calls with a `StorageError` of reason `Io`
 * (message "injected fault: …"), for error-path tests. A failing call does
 * not reach `inner` (except `partialBytes` of a write). Calls are counted
 * when the effect runs, not when it is created.
 */
export const makeFaultInjector = (inner: BlockStorageShape, rules: ReadonlyArray<FaultRule> = []): FaultInjector => {
  const counts: Record<FaultOperation, number> = { read: 0, write: 0, flush: 0, size: 0, resize: 0, discard: 0 }
  let active: Array<ActiveRule> = []
  const fired: Array<FaultCall> = []

  const inject = (rule: FaultRule): void => {
    active.push({ rule, remaining: rule.times ?? (rule.nth !== undefined ? 1 : Number.POSITIVE_INFINITY) })
  }
  rules.forEach(inject)

  /** The rule that fails this call, if any (consumes one of its `times`). */
  const match = (call: FaultCall): FaultRule | undefined => {
    for (const entry of active) {
      const { rule } = entry
      if (entry.remaining <= 0 || rule.operation !== call.operation) continue
      if (rule.nth !== undefined && rule.nth !== call.index) continue
      if (rule.when !== undefined && !rule.when(call)) continue
      entry.remaining--
      return rule
    }
    return undefined
  }

  const fault = (call: FaultCall): StorageError =>
    new StorageError({
      reason: "Io",
      message: `injected fault: ${call.operation} #${call.index}` +
        (call.offset === undefined ? "" : ` at ${call.offset}`) +
        (call.length === undefined ? "" : ` (${call.length} bytes)`),
      location: inner.location,
      ...(call.offset === undefined ? {} : { offset: call.offset }),
      ...(call.length === undefined ? {} : { length: call.length })
    })

  const guarded = <A>(
    operation: FaultOperation,
    offset: number | undefined,
    length: number | undefined,
    run: () => Effect.Effect<A, StorageError>,
    partial?: (rule: FaultRule) => Effect.Effect<void, StorageError>
  ): Effect.Effect<A, StorageError> =>
    Effect.suspend(() => {
      const call: FaultCall = { operation, index: ++counts[operation], offset, length }
      const rule = match(call)
      if (rule === undefined) return run()
      fired.push(call)
      const error = fault(call)
      return partial === undefined ? Effect.fail(error) : Effect.andThen(partial(rule), Effect.fail(error))
    })

  const storage: BlockStorageShape = {
    location: inner.location,
    capabilities: inner.capabilities,
    read: (offset, into) => guarded("read", offset, into.length, () => inner.read(offset, into)),
    write: (offset, data) =>
      guarded("write", offset, data.length, () => inner.write(offset, data), (rule) => {
        const bytes = Math.min(rule.partialBytes ?? 0, data.length)
        return bytes > 0 ? inner.write(offset, data.subarray(0, bytes)) : Effect.void
      }),
    flush: () => guarded("flush", undefined, undefined, inner.flush),
    size: () => guarded("size", undefined, undefined, inner.size),
    resize: (size) => guarded("resize", size, undefined, () => inner.resize(size)),
    discard: (offset, length) => guarded("discard", offset, length, () => inner.discard(offset, length))
  }

  return {
    storage,
    inject,
    failNth: (operation, n) => inject({ operation, nth: n }),
    failNext: (operation) => inject({ operation, nth: counts[operation] + 1 }),
    failWhen: (operation, predicate) => inject({ operation, when: predicate }),
    clear: () => {
      active = []
    },
    calls: (operation) => counts[operation],
    injected: () => fired
  }
}
