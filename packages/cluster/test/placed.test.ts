/**
 * Engine.write's `placed`: completed once the host clusters of the whole
 * write are decided, before its data is written, so that a caller writing
 * in guest order (qemu-img convert) may start the next write early and
 * still get the layout of one write at a time.
 */
import { Deferred, Effect, Fiber } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { openEngine, pattern, qemuCheck, qemuImg, run, scratch } from "./engine.js"

const KiB = 1024
const files = scratch()
afterAll(() => files.cleanup())

describe("write placed", () => {
  it("completes while the data of the write's last part is still held, and the next write is laid out after it", async () => {
    // 512-byte clusters: an L2 table covers 32 KiB, so a 48 KiB write is planned in steps.
    const a = pattern(48 * KiB, 1)
    const b = pattern(40 * KiB, 2)
    const make = (name: string) => {
      const file = files.path(name)
      qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", file, "1M")
      return file
    }
    const sequential = await openEngine(make("sequential.qcow2"))
    await run(Effect.andThen(sequential.engine.write(16 * KiB, a), sequential.engine.write(64 * KiB, b)))
    await run(sequential.engine.flush())

    const gate = await run(Deferred.make<void>())
    const isLastPartOfA = (d: Uint8Array) => d.buffer === a.buffer && d.byteOffset + d.length === a.byteOffset + a.length && d.length < a.length
    const overlapped = await openEngine(make("overlapped.qcow2"), {
      wrap: (s) => ({ ...s, write: (o, d) => (isLastPartOfA(d) ? Effect.andThen(Deferred.await(gate), s.write(o, d)) : s.write(o, d)) })
    })
    const engine = overlapped.engine
    const first = await run(
      Effect.gen(function* () {
        const placed = yield* Deferred.make<void>()
        const w = yield* Effect.forkChild(engine.write(16 * KiB, a, placed))
        const winner = yield* Effect.raceFirst(Effect.as(Deferred.await(placed), "placed" as const), Effect.as(Fiber.await(w), "written" as const))
        yield* engine.write(64 * KiB, b)
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(w)
        return winner
      })
    )
    expect(first).toBe("placed")
    await run(engine.flush())
    const got = new Uint8Array(a.length)
    await run(engine.read(16 * KiB, got))
    expect(Buffer.compare(got, a)).toBe(0)
    expect(Buffer.compare(await overlapped.bytes(), await sequential.bytes())).toBe(0)
    await overlapped.save(files.path("overlapped.qcow2"))
    expect(qemuCheck(files.path("overlapped.qcow2"))).toMatchObject({ exitCode: 0 })
  })
})
