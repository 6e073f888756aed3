import { Effect, Fiber } from "effect"
import { describe, expect, it } from "vitest"
import { debugPoint, makeMemoryStorage, type BlockStorageShape, type StorageError } from "../src/index.js"
import { blkdebugConfigFromOptions, makeBlkdebugBreakpoints, makeBlkdebugStorage, mergeBlkdebugConfigs, parseBlkdebugConfigFile, type BlkdebugConfig } from "../src/blkdebug/index.js"
import { blockStorageConformance } from "../src/testing/index.js"

const config = (text: string): BlkdebugConfig => {
  const parsed = parseBlkdebugConfigFile(text)
  if (!parsed.ok) throw new Error(parsed.message)
  return parsed.config
}

/** The errno a request ends with ("ok" when it succeeds). */
const outcome = (effect: Effect.Effect<unknown, StorageError>): Promise<string> =>
  Effect.runPromise(
    effect.pipe(
      Effect.as("ok"),
      Effect.catch((e) => Effect.succeed(e.errno ?? e.reason))
    )
  )

const wrap = (text: string): BlockStorageShape => makeBlkdebugStorage(makeMemoryStorage({ name: "mem" }), config(text))

describe("blkdebug config files", () => {
  it("reads QEMU's [inject-error] and [set-state] sections, with or without blanks around '='", () => {
    const parsed = parseBlkdebugConfigFile(
      '# comment\n[inject-error]\nevent = "l2_load"\nerrno = "28"\nonce ="on"\nsector = "3"\n\n[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n'
    )
    expect(parsed).toEqual({
      ok: true,
      config: {
        rules: [
          { action: "inject-error", event: "l2_load", state: 0, ioTypes: ["read", "write", "write-zeroes", "discard", "flush"], errno: 28, offset: 1536, once: true, immediately: false },
          { action: "set-state", event: "write_aio", state: 1, newState: 2 }
        ]
      }
    })
  })

  it("refuses what QEMU refuses, with its messages", () => {
    expect(parseBlkdebugConfigFile('[inject-error]\nevent = "nonsense"\n')).toEqual({ ok: false, message: "invalid parameter value: nonsense" })
    expect(parseBlkdebugConfigFile('[inject-error]\nerrno = "5"\n')).toEqual({ ok: false, message: "Missing event name for rule" })
    expect(parseBlkdebugConfigFile('[inject-error]\nevent = "l1_update"\nonce = "maybe"\n')).toEqual({ ok: false, message: "Parameter 'once' expects 'on' or 'off'" })
    expect(parseBlkdebugConfigFile('event = "l1_update"\n')).toEqual({ ok: false, message: "no group defined" })
    expect(parseBlkdebugConfigFile('[bogus]\nevent = "l1_update"\n')).toEqual({ ok: false, message: "There is no option group 'bogus'" })
    expect(parseBlkdebugConfigFile("[inject-error]\nevent l1_update\n")).toEqual({ ok: false, message: "parse error" })
  })

  it("takes rules from block options, lists and single rules, file rules first", () => {
    const options = blkdebugConfigFromOptions(
      new Map([
        ["inject-error.0.event", "write_aio"],
        ["inject-error.0.errno", "5"],
        ["set-state.event", "l2_load"],
        ["set-state.new_state", "3"]
      ])
    )
    if (!options.ok) throw new Error(options.message)
    const merged = mergeBlkdebugConfigs(config('[inject-error]\nevent = "l1_update"\n'), options.config)
    expect(merged.rules.map((r) => `${r.action}:${r.event}`)).toEqual(["inject-error:l1_update", "inject-error:write_aio", "set-state:l2_load"])
  })
})

describe("blkdebug filter", () => {
  it("fails every request after the event until the end, or once", async () => {
    const always = wrap('[inject-error]\nevent = "l1_update"\nerrno = "28"\n')
    expect(await outcome(always.write(0, new Uint8Array(8)))).toBe("ok")
    always.debugEvent?.("l2_load")
    expect(await outcome(always.read(0, new Uint8Array(8)))).toBe("ok")
    always.debugEvent?.("l1_update")
    expect(await outcome(always.write(0, new Uint8Array(8)))).toBe("ENOSPC")
    expect(await outcome(always.read(0, new Uint8Array(8)))).toBe("ENOSPC")
    expect(await outcome(always.flush())).toBe("ENOSPC")

    const once = wrap('[inject-error]\nevent = "l1_update"\nonce = "on"\n')
    once.debugEvent?.("l1_update")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("EIO")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("ok")
    once.debugEvent?.("l1_update")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("ok")
  })

  it("matches the request kind and the sector", async () => {
    const storage = wrap('[inject-error]\nevent = "write_aio"\niotype = "write"\nsector = "2"\n')
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.read(0, new Uint8Array(2048)))).toBe("ok")
    expect(await outcome(storage.write(0, new Uint8Array(1024)))).toBe("ok")
    expect(await outcome(storage.write(512, new Uint8Array(1024)))).toBe("EIO")
  })

  it("moves between states: a rule for state 2 fires only after a set-state rule", async () => {
    const storage = wrap('[set-state]\nevent = "write_aio"\nnew_state = "2"\n[inject-error]\nevent = "write_aio"\nstate = "2"\n')
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("ok")
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("EIO")
  })

  it("lets a flush through untouched when nothing was written since the last one, as QEMU's block layer does", async () => {
    const storage = wrap('[inject-error]\nevent = "cluster_alloc"\n')
    storage.debugEvent?.("cluster_alloc")
    expect(await outcome(storage.flush())).toBe("ok")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("EIO")
    expect(await outcome(storage.flush())).toBe("EIO")
  })
})

blockStorageConformance("blkdebug without rules", () => Effect.succeed(makeBlkdebugStorage(makeMemoryStorage({ name: "mem" }), { rules: [] })))

describe("blkdebug breakpoints", () => {
  /** Breakpoints whose report lines are collected in `lines`. */
  const make = () => {
    const lines: string[] = []
    return { lines, breakpoints: makeBlkdebugBreakpoints((line) => lines.push(line)) }
  }

  it("hold the next request raising the event until resumed, once per rule", async () => {
    const { lines, breakpoints } = make()
    expect(breakpoints.set("write_aio", "A")).toBe(true)
    expect(breakpoints.set("no_such_event", "B")).toBe(false)
    const order: string[] = []
    const program = Effect.gen(function* () {
      const held = yield* Effect.forkChild(Effect.andThen(breakpoints.reach("write_aio"), Effect.sync(() => order.push("held request done"))))
      yield* Effect.yieldNow
      expect(breakpoints.isSuspended("A")).toBe(true)
      expect(breakpoints.held()).toBe(1)
      // The rule fired: another request raising the event goes on.
      yield* breakpoints.reach("write_aio")
      order.push("second request done")
      expect(breakpoints.resume("B")).toBe(false)
      expect(breakpoints.resume("A")).toBe(true)
      expect(breakpoints.isSuspended("A")).toBe(false)
      yield* Fiber.join(held)
    })
    await Effect.runPromise(program)
    expect(order).toEqual(["second request done", "held request done"])
    expect(lines).toEqual(["blkdebug: Suspended request 'A'\n", "blkdebug: Resuming request 'A'\n"])
  })

  it("two rules on one event hold the request until both are resumed; remove_break resumes and fails when no rule is left", async () => {
    const { lines, breakpoints } = make()
    breakpoints.set("cow_read", "D")
    breakpoints.set("cow_read", "D")
    breakpoints.set("read_aio", "E")
    let done = false
    await Effect.runPromise(
      Effect.gen(function* () {
        const held = yield* Effect.forkChild(Effect.andThen(breakpoints.reach("cow_read"), Effect.sync(() => void (done = true))))
        yield* Effect.yieldNow
        expect(breakpoints.held()).toBe(1)
        expect(breakpoints.resume("D")).toBe(true)
        yield* Effect.yieldNow
        expect(done).toBe(false)
        // No D rule is left to drop, but the suspension is resumed all the same.
        expect(breakpoints.remove("D")).toBe(false)
        yield* Fiber.join(held)
        expect(breakpoints.remove("E")).toBe(true)
        expect(breakpoints.remove("E")).toBe(false)
        yield* breakpoints.reach("read_aio")
      })
    )
    expect(done).toBe(true)
    expect(lines).toEqual([
      "blkdebug: Suspended request 'D'\n",
      "blkdebug: Suspended request 'D'\n",
      "blkdebug: Resuming request 'D'\n",
      "blkdebug: Resuming request 'D'\n"
    ])
  })

  it("a blkdebug store with breakpoints offers them to the format driver as debugBreak", async () => {
    const { breakpoints } = make()
    const store = makeBlkdebugStorage(makeMemoryStorage({ name: "mem" }), { rules: [] }, breakpoints)
    breakpoints.set("write_aio", "W")
    const fiber = Effect.runFork(Effect.andThen(debugPoint(store, "write_aio"), store.write(0, new Uint8Array([1]))))
    await Effect.runPromise(Effect.yieldNow)
    expect(breakpoints.isSuspended("W")).toBe(true)
    breakpoints.resume("W")
    await Effect.runPromise(Fiber.join(fiber))
    expect(wrap("").debugBreak).toBeUndefined()
  })

  it("a debug point raises its event when it runs, not when it is built: a chain that fails before it raises nothing", async () => {
    const events: Array<string> = []
    const store: BlockStorageShape = { ...makeMemoryStorage({ name: "mem" }), debugEvent: (event) => void events.push(event) }
    const point = debugPoint(store, "l1_update")
    const chain = Effect.andThen(Effect.fail("earlier step failed"), point)
    expect(events).toEqual([])
    await Effect.runPromiseExit(chain)
    expect(events).toEqual([])
    await Effect.runPromise(point)
    await Effect.runPromise(point)
    expect(events).toEqual(["l1_update", "l1_update"])
    expect(debugPoint(makeMemoryStorage({ name: "plain" }), "l1_update")).toBe(Effect.void)
  })
})
