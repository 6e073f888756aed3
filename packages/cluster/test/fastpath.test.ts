/**
 * The request fast path (fastpath.ts) against a model: batches of
 * concurrent reads, writes, write-zeroes and discards on disjoint ranges,
 * over storage that lets other fibers run inside every request, so that
 * direct writes (no metadata lock) interleave with allocations, discards
 * and zeroing. After each batch the whole image reads as the model; at the
 * end a snapshot taken between batches still holds what the model held
 * then, qemu-img check finds the image clean and qemu-img compare finds it
 * equal to the model.
 */
import { readFileSync, writeFileSync } from "node:fs"
import { Deferred, Effect, Fiber } from "effect"
import fc from "fast-check"
import { afterAll, describe, expect, it } from "vitest"
import { StorageError, writeNowFor, type BlockStorageShape } from "@qcow2/storage"
import { openEngine, pattern, qemuCheck, qemuImg, qemuIo, run, scratch } from "./engine.js"

const KiB = 1024
const cs = 64 * KiB
const clusters = 48
const size = clusters * cs

/**
 * Storage whose requests first let other fibers run (0–2 or 40 times), in
 * an order fast-check picks; its writeNow writes at once when the pick is
 * even and declines otherwise, so direct writes take both paths.
 */
const yielding = (yields: () => number) => (s: BlockStorageShape): BlockStorageShape => {
  const pause = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      let e: Effect.Effect<A, E> = effect
      for (let n = yields(); n > 0; n--) e = Effect.andThen(Effect.yieldNow, e)
      return e
    })
  const write: BlockStorageShape["write"] = (o, d) => pause(s.write(o, d))
  return { ...s, read: (o, b) => pause(s.read(o, b)), write, writeNow: writeNowFor(write, (o, d) => (yields() % 2 === 0 ? s.writeNow!(o, d) : false)) }
}

type RangeOp =
  | { readonly kind: "read" | "discard" | "zero"; readonly offset: number; readonly length: number }
  | { readonly kind: "write"; readonly offset: number; readonly length: number; readonly seed: number }
type Op = RangeOp | { readonly kind: "flush" }

/** One op on a range inside clusters [slot * 3, slot * 3 + 3): batches never overlap themselves. */
const opIn = (slot: number): fc.Arbitrary<RangeOp> =>
  fc
    .record({
      kind: fc.constantFrom("read", "write", "write", "write", "discard", "zero"),
      start: fc.integer({ min: 0, max: 3 * cs - 1 }),
      length: fc.oneof(fc.constant(4 * KiB), fc.integer({ min: 1, max: 2 * cs })),
      seed: fc.integer({ min: 1, max: 0x7fffffff })
    })
    .map(({ kind, start, length, seed }) => {
      const offset = slot * 3 * cs + Math.floor(start / 512) * 512
      const len = Math.min(length, (slot + 1) * 3 * cs - offset)
      return kind === "write" ? { kind, offset, length: len, seed } : { kind, offset, length: len }
    })

/**
 * The ops of one slot: one op, or a write racing a discard or zero of the
 * same slot (whose outcome is either order; the slot is then taken as the
 * image reads it, but nothing else may change and the image must stay sound).
 */
const slotOps = (slot: number): fc.Arbitrary<{ readonly slot: number; readonly ops: ReadonlyArray<Op> }> =>
  fc.oneof(
    { weight: 3, arbitrary: opIn(slot).map((op) => ({ slot, ops: [op] })) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(opIn(slot), fc.constantFrom("discard" as const, "zero" as const))
        .map(([op, kind]) => ({
          slot,
          ops: [op.kind === "write" ? op : { kind: "write" as const, offset: op.offset, length: op.length, seed: 7 }, { kind, offset: slot * 3 * cs, length: 3 * cs }]
        }))
    }
  )

/**
 * Slots in a random order, and flushes among them: a flush is what lets a
 * freed cluster be allocated again (Refcounts.settleFreed), so it is what
 * turns a write landing late into a freed cluster into lost data.
 */
const batch = fc
  .tuple(fc.subarray([...Array(clusters / 3).keys()], { minLength: 1, maxLength: 8 }), fc.integer({ min: 0, max: 2 }))
  .chain(([slots, flushes]) =>
    fc.shuffledSubarray([...slots.map((slot) => ({ slot })), ...Array.from({ length: flushes }, () => ({ slot: -1 }))], {
      minLength: slots.length + flushes
    })
  )
  .chain((entries) => fc.tuple(...entries.map((e) => (e.slot < 0 ? fc.constant({ slot: -1, ops: [{ kind: "flush" as const }] }) : slotOps(e.slot)))))

const files = scratch()
afterAll(() => files.cleanup())

describe("fast path", () => {
  it("concurrent reads, writes, zeroes and discards on disjoint ranges read back as the model (property)", async () => {
    let round = 0
    await fc.assert(
      fc.asyncProperty(fc.array(batch, { minLength: 2, maxLength: 6 }), fc.array(fc.oneof(fc.integer({ min: 0, max: 2 }), fc.constant(40)), { minLength: 1, maxLength: 64 }), async (batches, yieldPlan) => {
        round++
        const file = files.path(`fast-${round}.qcow2`)
        qemuImg("create", "-q", "-f", "qcow2", file, String(size))
        // Owned clusters (the fast path's writes) and unallocated ones (allocating writes).
        qemuIo("-c", `write -P 0x11 0 ${size / 2}`, file)
        const model = new Uint8Array(size)
        model.fill(0x11, 0, size / 2)
        let turn = 0
        const opened = await openEngine(file, { wrap: yielding(() => yieldPlan[turn++ % yieldPlan.length]!) })
        const engine = opened.engine
        let snapshotModel: Uint8Array | undefined
        for (const [b, slots] of batches.entries()) {
          // A snapshot between two batches: later writes must copy the clusters it shares, never write into them.
          if (b === 1) {
            await run(engine.createSnapshot("s1", { seconds: 0, nanoseconds: 0 }))
            snapshotModel = model.slice()
          }
          const before = model.slice()
          const ops = slots.flatMap((s) => s.ops)
          const reads = await run(
            Effect.all(
              ops.map((op) => {
                switch (op.kind) {
                  case "read": {
                    const into = new Uint8Array(op.length)
                    return Effect.as(engine.read(op.offset, into), into)
                  }
                  case "write":
                    return Effect.as(engine.write(op.offset, pattern(op.length, op.seed)), undefined)
                  case "zero":
                    return Effect.as(engine.writeZeroes(op.offset, op.length), undefined)
                  case "discard":
                    return Effect.as(engine.discard(op.offset, op.length), undefined)
                  case "flush":
                    return Effect.as(engine.flush(), undefined)
                }
              }),
              { concurrency: "unbounded" }
            )
          )
          ops.forEach((op, i) => {
            if (op.kind === "read") expect(reads[i]).toEqual(before.subarray(op.offset, op.offset + op.length))
            else if (op.kind === "write") model.set(pattern(op.length, op.seed), op.offset)
            else if (op.kind === "zero") model.fill(0, op.offset, op.offset + op.length)
            else if (op.kind === "discard") {
              // Discard drops whole clusters only (no backing file: they read as zeros).
              const first = Math.ceil(op.offset / cs) * cs
              const last = Math.floor((op.offset + op.length) / cs) * cs
              if (last > first) model.fill(0, first, last)
            }
          })
          const all = new Uint8Array(size)
          await run(engine.read(0, all))
          for (const s of slots) {
            if (s.ops.length > 1 && s.slot >= 0) model.set(all.subarray(s.slot * 3 * cs, (s.slot + 1) * 3 * cs), s.slot * 3 * cs)
          }
          expect(Buffer.compare(all, model)).toBe(0)
        }
        await run(engine.flush())
        await opened.save(file)
        expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
        const raw = files.path(`fast-${round}.raw`)
        writeFileSync(raw, model)
        qemuImg("compare", "-q", "-f", "qcow2", "-F", "raw", file, raw)
        if (snapshotModel !== undefined) {
          const snap = files.path(`fast-${round}-s1.raw`)
          qemuImg("convert", "-l", "snapshot.name=s1", "-O", "raw", file, snap)
          expect(Buffer.compare(readFileSync(snap), snapshotModel)).toBe(0)
        }
      }),
      { numRuns: 12 }
    )
  }, 120_000)

  it("a write into owned clusters goes to storage at once through writeNow, and through write when writeNow declines", async () => {
    const file = files.path("now.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", file, String(size))
    qemuIo("-c", `write -P 0x11 0 ${2 * cs}`, file)
    let nowCalls = 0
    let writeCalls = 0
    let decline = false
    const opened = await openEngine(file, {
      wrap: (s) => {
        const write: BlockStorageShape["write"] = (o, d) => {
          writeCalls++
          return s.write(o, d)
        }
        return {
          ...s,
          write,
          writeNow: writeNowFor(write, (o, d) => {
            nowCalls++
            return decline ? false : s.writeNow!(o, d)
          })
        }
      }
    })
    const engine = opened.engine
    await run(engine.read(0, new Uint8Array(4 * KiB)))
    const first = pattern(4 * KiB, 3)
    await run(engine.write(4 * KiB, first))
    expect([nowCalls, writeCalls]).toEqual([1, 0])
    decline = true
    const second = pattern(8 * KiB, 4)
    await run(engine.write(cs + 8 * KiB, second))
    expect([nowCalls, writeCalls]).toEqual([2, 1])
    await run(engine.flush())
    await opened.save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    const raw = files.path("now.raw")
    qemuImg("convert", "-O", "raw", file, raw)
    const bytes = readFileSync(raw)
    const expected = new Uint8Array(2 * cs).fill(0x11)
    expected.set(first, 4 * KiB)
    expected.set(second, cs + 8 * KiB)
    expect(Buffer.compare(bytes.subarray(0, 2 * cs), expected)).toBe(0)
  })

  it("a write into owned clusters that writeNow fails is a failed write, with the store's errno, and leaves the image as it was", async () => {
    const file = files.path("now-full.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", file, String(size))
    qemuIo("-c", `write -P 0x11 0 ${cs}`, file)
    const opened = await openEngine(file, {
      wrap: (s) => ({
        ...s,
        writeNow: writeNowFor(s.write, (o) => new StorageError({ reason: "NoSpace", message: "no space left", offset: o, location: s.location }))
      })
    })
    const engine = opened.engine
    await run(engine.read(0, new Uint8Array(4 * KiB)))
    const failure = await run(Effect.flip(engine.write(4 * KiB, pattern(4 * KiB, 3))))
    expect(failure).toMatchObject({ _tag: "ImageError", reason: "NoSpace" })
    await run(engine.flush())
    await opened.save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    const raw = files.path("now-full.raw")
    qemuImg("convert", "-O", "raw", file, raw)
    expect(readFileSync(raw).subarray(0, cs).every((b) => b === 0x11)).toBe(true)
  })

  it("a write in flight into a cluster is never overtaken by a discard that frees it for another write", async () => {
    const file = files.path("late.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", file, String(size))
    qemuIo("-c", `write -P 0x11 0 ${cs}`, file)
    const late = pattern(4 * KiB, 99)
    const gate = await run(Deferred.make<void>())
    const reached = await run(Deferred.make<void>())
    // The write of `late` stops in storage until the gate opens.
    const opened = await openEngine(file, {
      wrap: (s) => ({
        ...s,
        write: (o, d) => (d === late ? Effect.andThen(Effect.andThen(Deferred.succeed(reached, undefined), Deferred.await(gate)), s.write(o, d)) : s.write(o, d))
      })
    })
    const engine = opened.engine
    await run(engine.read(0, new Uint8Array(4 * KiB)))
    const other = pattern(cs, 5)
    await run(
      Effect.gen(function* () {
        const w = yield* Effect.forkChild(engine.write(0, late))
        yield* Deferred.await(reached)
        // Discard frees the cluster, the flush makes it reusable, the next allocation may take it.
        const rest = yield* Effect.forkChild(Effect.andThen(Effect.andThen(engine.discard(0, cs), engine.flush()), engine.write(8 * cs, other)))
        for (let i = 0; i < 500; i++) yield* Effect.yieldNow
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(w)
        yield* Fiber.join(rest)
      })
    )
    const got = new Uint8Array(cs)
    await run(engine.read(8 * cs, got))
    expect(Buffer.compare(got, other)).toBe(0)
    await run(engine.flush())
    await opened.save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })

  it("a partial write-zeroes beside an allocating write in the same cluster keeps the written bytes", async () => {
    const file = files.path("widen.qcow2")
    qemuImg("create", "-q", "-f", "qcow2", file, String(size))
    const gate = await run(Deferred.make<void>())
    const reached = await run(Deferred.make<void>())
    let armed = false
    // The first storage write once armed (the allocating write's data) stops until the gate opens.
    const opened = await openEngine(file, {
      wrap: (s) => ({
        ...s,
        write: (o, d) => {
          if (!armed) return s.write(o, d)
          armed = false
          return Effect.andThen(Effect.andThen(Deferred.succeed(reached, undefined), Deferred.await(gate)), s.write(o, d))
        }
      })
    })
    const engine = opened.engine
    const data = pattern(1024, 7)
    await run(
      Effect.gen(function* () {
        armed = true
        const w = yield* Effect.forkChild(engine.write(5 * cs, data))
        yield* Deferred.await(reached)
        // The rest of cluster 5 reads as zeros until the write lands: widening this zeroing to the whole cluster then would wipe it.
        const z = yield* Effect.forkChild(engine.writeZeroes(5 * cs + 2048, 512))
        for (let i = 0; i < 500; i++) yield* Effect.yieldNow
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(w)
        yield* Fiber.join(z)
      })
    )
    const got = new Uint8Array(4096)
    await run(engine.read(5 * cs, got))
    const expected = new Uint8Array(4096)
    expected.set(data)
    expect(Buffer.compare(got, expected)).toBe(0)
    await run(engine.flush())
    await opened.save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })
})
