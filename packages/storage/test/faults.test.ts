import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { makeMemoryStorage } from "../src/index.js"
import { blockStorageConformance, makeFaultInjector } from "../src/testing/index.js"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

blockStorageConformance("fault injector without rules", () => Effect.succeed(makeFaultInjector(makeMemoryStorage()).storage))

describe("makeFaultInjector", () => {
  it("fails the nth write with reason Io and leaves the inner store alone", async () => {
    const inner = makeMemoryStorage({ name: "disk" })
    const faults = makeFaultInjector(inner)
    faults.failNth("write", 3)
    const results = await run(Effect.all(
      [1, 2, 3, 4].map((i) => Effect.result(faults.storage.write(i * 10, new Uint8Array(5).fill(i))))
    ))
    expect(results.map((r) => r._tag)).toEqual(["Success", "Success", "Failure", "Success"])
    const error = results[2]._tag === "Failure" ? results[2].failure : undefined
    expect(error?._tag).toBe("StorageError")
    expect(error?.reason).toBe("Io")
    expect(error?.location).toBe("disk")
    expect(error?.offset).toBe(30)
    expect(error?.length).toBe(5)
    expect(error?.message).toContain("injected fault: write #3")
    const back = new Uint8Array(5)
    await run(inner.read(30, back))
    expect(back).toEqual(new Uint8Array(5))
    expect(faults.calls("write")).toBe(4)
    expect(faults.injected()).toEqual([{ operation: "write", index: 3, offset: 30, length: 5 }])
  })

  it("counts calls when the effect runs, not when it is created", async () => {
    const faults = makeFaultInjector(makeMemoryStorage())
    const first = faults.storage.flush()
    const second = faults.storage.flush()
    faults.failNth("flush", 1)
    const exit = await run(Effect.result(second))
    expect(exit._tag).toBe("Failure")
    await run(first)
    expect(faults.calls("flush")).toBe(2)
  })

  it("fails every matching call of a predicate until cleared", async () => {
    const faults = makeFaultInjector(makeMemoryStorage({ initial: new Uint8Array(1000).fill(1) }))
    faults.failWhen("read", (call) => (call.offset ?? 0) >= 500)
    const read = (offset: number) => Effect.result(faults.storage.read(offset, new Uint8Array(10)))
    const tags = await run(Effect.all([read(0), read(600), read(700), read(499)]))
    expect(tags.map((r) => r._tag)).toEqual(["Success", "Failure", "Failure", "Success"])
    faults.clear()
    expect((await run(read(600)))._tag).toBe("Success")
  })

  it("fails the next call, a limited number of times, and other operations", async () => {
    const faults = makeFaultInjector(makeMemoryStorage(), [{ operation: "size", times: 2 }])
    const s = faults.storage
    const outcome = <A>(effect: Effect.Effect<A, unknown>) => run(Effect.map(Effect.result(effect), (r) => r._tag))
    expect(await outcome(s.size())).toBe("Failure")
    expect(await outcome(s.size())).toBe("Failure")
    expect(await outcome(s.size())).toBe("Success")
    await run(s.write(0, new Uint8Array(10)))
    faults.failNext("write")
    expect(await outcome(s.write(0, new Uint8Array(1)))).toBe("Failure")
    expect(await outcome(s.write(0, new Uint8Array(1)))).toBe("Success")
    faults.failNext("resize")
    faults.failNext("discard")
    faults.failNext("flush")
    expect(await outcome(s.resize(5))).toBe("Failure")
    expect(await outcome(s.discard(0, 5))).toBe("Failure")
    expect(await outcome(s.flush())).toBe("Failure")
    expect(await run(s.size())).toBe(10)
  })

  it("can apply part of a failing write", async () => {
    const inner = makeMemoryStorage()
    const faults = makeFaultInjector(inner)
    faults.inject({ operation: "write", nth: 1, partialBytes: 3 })
    const exit = await run(Effect.result(faults.storage.write(0, new Uint8Array([1, 2, 3, 4, 5]))))
    expect(exit._tag).toBe("Failure")
    const back = new Uint8Array(5)
    await run(inner.read(0, back))
    expect(back).toEqual(new Uint8Array([1, 2, 3, 0, 0]))
  })
})
